"""Run configuration: one frozen dataclass per component, composed, loaded from TOML with overrides.

    cfg = load_config("configs/demo.toml", overrides=["learner.actor_lr=1e-4"])

This is the one home of every setting: the component dataclasses (environment, expert,
curriculum, network, replay, learner, actors, run) with a docstring under each field,
their validation (one range per field, in :func:`validate`), and TOML loading. Unknown
sections or keys and values of the wrong type are :class:`ConfigError`s that name the key
and list the valid ones with their documentation.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import tomllib
import typing
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import RelaxRLError


class ConfigError(RelaxRLError, ValueError):
    """A configuration file or override is invalid; the message says which key and how to fix it."""


# ----------------------------------------------------------------- environment and actors

@dataclass(frozen=True)
class EnvConfig:
    fmax: float = 0.05
    """Convergence threshold on the largest per-atom force norm, eV/Å."""
    max_steps: int = 200
    """Steps before an episode is truncated (truncation is not termination)."""
    calculator: str = "emt"
    """ASE calculator by name: 'emt' or an importable 'module:Class' / 'module.Class'."""
    calculator_kwargs: dict = field(default_factory=dict)
    """Keyword arguments passed to the calculator's constructor."""
    max_step: float = 0.2
    """Largest displacement of one atom in one step, Å (longer moves are shortened)."""
    min_distance_factor: float = 0.6
    """Moves that bring a pair closer than this × (r_cov,i + r_cov,j) are scaled back."""
    env_input_dim: int = 0
    """Number of global env features in the observation (0 disables them; max 3: log10 Fmax, step fraction, last a_back)."""
    w_fmax: float = 0.7
    """Reward weight of −Fmax (eV/Å)."""
    w_fmean: float = 0.3
    """Reward weight of −mean per-atom force norm (eV/Å)."""
    w_delta: float = 1.0
    """Reward weight of the decrease of Fmax since the previous step (Fmax_prev − Fmax)."""
    w_log: float = 0.1
    """Reward weight of −log10(max(Fmax, 1e-6))."""
    w_back: float = 1.0
    """Reward penalty per unit of a_back (fraction of the move taken back)."""
    converged_bonus: float = 10.0
    """Reward added on the step that reaches Fmax < fmax."""


@dataclass(frozen=True)
class ExpertConfig:
    maxstep: float = 0.2
    """BFGS maxstep (Å), as ase.optimize.BFGS."""
    p_start: float = 1.0
    """Probability that an expert actor's step is a fake (BFGS) step at t_total = 0 (the nfake schedule)."""
    p_end: float = 0.1
    """Probability of a fake step at the end of the schedule."""
    decay_steps: int = 20000
    """t_total over which the fake-step probability moves from p_start to p_end."""
    schedule: str = "linear"
    """Shape of the decay: 'linear' or 'exponential'."""


@dataclass(frozen=True)
class CurriculumConfig:
    source: str = "demo"
    """Structure source: 'demo' (generated EMT clusters, bulk and slabs) or a directory of CIF/POSCAR/extxyz files."""
    n_structures: int = 64
    """Number of generated structures (source='demo')."""
    heldout_fraction: float = 0.25
    """Share of structures held out for evaluation (deterministic split by seed)."""
    elements: tuple = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
    """Elements used by generated structures."""
    stages: tuple = (8, 16, 32, 64)
    """Maximum atom count of each curriculum stage, in order."""
    unlock_t_total: int = 20000
    """Environment steps after which the next stage unlocks (0 = never by steps)."""
    unlock_success: float = 0.6
    """Success rate over recent episodes that unlocks the next stage (> 1 disables)."""
    success_window: int = 50
    """Episodes in the success-rate window."""
    rattle: float = 0.15
    """Standard deviation (Å) of the rattle applied to generated bulk and slabs."""
    min_distance: float = 2.0
    """Minimum interatomic distance (Å) in generated clusters."""


@dataclass(frozen=True)
class ActorConfig:
    num_online: int = 1
    """Online actors (policy + exploration noise)."""
    num_expert: int = 1
    """Expert actors (BFGS fake steps per the nfake schedule)."""
    envs_per_actor: int = 4
    """Environments stepped together by one actor with one batched policy forward."""
    sigma_start: float = 0.05
    """Exploration noise standard deviation (Å) at t_total = 0."""
    sigma_end: float = 0.01
    """Exploration noise standard deviation (Å) at the end of the decay."""
    sigma_decay_steps: int = 20000
    """t_total over which sigma decays linearly."""
    noise_force_scale: float = 1.0
    """Per-atom noise is sigma·min(1, |F_i| / this) (eV/Å): full exploration far from a minimum, little near one, where a 0.03 Å kick alone would exceed fmax."""
    insert_batch: int = 16
    """Transitions buffered before one batched insert into the replay."""
    max_restarts: int = 3
    """Ray restarts of a crashed actor."""
    num_cpus: float = 0.5
    """CPUs Ray reserves per actor."""


# ----------------------------------------------------------------- networks and learner

@dataclass(frozen=True)
class NetworkConfig:
    env_input_dim: int = 0
    """Global env features fused late (0 = plain geometric model: no tail_mlp, no env gate)."""
    radius: float = 5.0
    """Neighbour cutoff, Å (the design notes suggest 6–7 Å on large cells)."""
    max_neighbors: int = 32
    """Neighbours kept per atom, nearest first (0 = no cap)."""
    num_layers: int = 3
    """Interaction (message-passing) layers, 2–6."""
    lmax: int = 1
    """Largest spherical-harmonic degree of edge features and hidden irreps."""
    channels: int = 16
    """Multiplicity of each irrep in the hidden features (scalars and vectors)."""
    num_basis: int = 8
    """Radial basis functions of the distance."""
    radial_hidden: int = 32
    """Hidden width of the radial MLP that gives tensor-product weights."""
    max_species: int = 100
    """Size of the species embedding table (atomic numbers up to this)."""
    avg_num_neighbors: float = 12.0
    """Messages summed at a receiver are divided by this (keeps feature scale independent of the radius)."""
    tail_hidden: int = 32
    """Hidden width of the small MLPs on env features (actor env gate, critic tail_mlp)."""
    max_step: float = 0.2
    """Bound on the norm of each atom's displacement, Å (equivariant squashing)."""
    per_atom_q: bool = False
    """Expose per-atom critic values whose sum is Q (per-atom credit assignment)."""
    dtype: str = "float32"
    """Torch dtype of the networks: 'float32' or 'float64'."""


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.95
    """Discount factor."""
    tau: float = 0.005
    """Polyak averaging rate of the target networks."""
    actor_lr: float = 3e-4
    """Actor Adam learning rate."""
    critic_lr: float = 3e-4
    """Critic Adam learning rate."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    target_noise: float = 0.02
    """Std of the target-policy smoothing noise, Å."""
    target_noise_clip: float = 0.05
    """Clip of the target-policy smoothing noise, Å."""
    lambda_dev: float = 1.0
    """Weight of the action-deviation penalty ‖π(s) − a_actual‖² in the actor loss."""
    bc_start: float = 1.0
    """Behaviour-cloning weight λ_bc at update 0 (expert items only)."""
    bc_end: float = 0.0
    """Behaviour-cloning weight at the end of its decay."""
    bc_decay_updates: int = 5000
    """Updates over which λ_bc decays linearly from bc_start to bc_end."""
    expert_fraction_start: float = 0.25
    """Share of each batch drawn from the expert table at update 0."""
    expert_fraction_end: float = 0.2
    """Share of each batch drawn from the expert table at the end of its schedule."""
    expert_fraction_decay_updates: int = 5000
    """Updates over which the expert share moves linearly from start to end."""
    beta_start: float = 0.4
    """Importance-sampling exponent β at update 0 (annealed to 1)."""
    beta_anneal_updates: int = 10000
    """Updates over which β goes linearly to 1."""
    priority_eps: float = 1e-3
    """ε in priorities |δ| + ε."""
    max_updates: int = 2000
    """Updates before training stops (0 = run until time_limit_s)."""
    time_limit_s: float = 0.0
    """Wall-clock limit of training in seconds (0 = none)."""
    publish_every: int = 10
    """Publish versioned weights to the actors every this many updates."""
    checkpoint_every: int = 200
    """Checkpoint every this many updates."""
    log_every: int = 10
    """Append a metrics.jsonl row every this many updates."""
    max_nonfinite: int = 20
    """Consecutive non-finite losses that stop the run."""
    normalize_actor_loss: bool = True
    """Scale −Q by mean|Q| and measure the penalties in units of network.max_step (TD3+BC), so λ_dev and λ_bc do not depend on the reward scale."""
    relative_bc: float = 0.005
    """δ (Å) of the relative behaviour-cloning error ‖π − a_BFGS‖² / (‖a_BFGS‖² + δ²) per graph (0 = absolute error in units of max_step)."""
    grad_clip: float = 10.0
    """Global gradient-norm clip (0 = none)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""


# ----------------------------------------------------------------- replay

@dataclass(frozen=True)
class ReplayConfig:
    url: str = ""
    """Redis URL (redis://, rediss://, unix://); empty = embedded redis-server in the run directory."""
    expert_max_size: int = 2000
    """Capacity of the expert table (FIFO eviction)."""
    online_max_size: int = 5000
    """Capacity of the online table (FIFO eviction)."""
    alpha: float = 0.6
    """Priority exponent α of proportional prioritized sampling."""
    min_size_to_sample: int = 64
    """Items a table must hold before the learner may sample (Reverb's MinSize)."""
    samples_per_insert: float = 0.0
    """Target sampled/inserted ratio (0 = no ratio limit, only min_size_to_sample)."""
    error_buffer: float = 0.0
    """Allowed deviation from samples_per_insert, in samples (Reverb's SampleToInsertRatio)."""
    namespace: str = "relaxrl"
    """Prefix of every Redis key, so several runs can share one server."""
    appendfsync: str = "everysec"
    """Embedded Redis AOF fsync policy: 'everysec' or 'always'."""
    metrics_port: int = 0
    """Port of the replay service's Prometheus endpoint (0 = off)."""
    connect_timeout: float = 10.0
    """Seconds a client keeps retrying (exponential backoff) an unreachable Redis before it fails."""
    expert_rate_limited: bool = False
    """Apply min_size_to_sample / samples_per_insert to the expert table too (default: only `online`; the expert table then supplies min(round(B·f), size) items and never blocks)."""
    insert_chunk: int = 512
    """Most transitions reserved, stored and published in one step of an insert (larger inserts are split)."""


# ----------------------------------------------------------------- the run

@dataclass(frozen=True)
class RunSettings:
    name: str = "demo"
    """Name of the preset; shown in reports."""
    seed: int = 0
    """Seed of structures, networks, noise and sampling."""
    run_dir: str = ""
    """Run directory (empty = runs/<name>-<timestamp>)."""
    metrics_port: int = 0
    """Ray metrics export port of a local Ray head started by `relaxrl train` (0 = Ray picks one)."""
    eval_episodes: int = 16
    """Held-out structures evaluated after training (trained vs untrained policy)."""
    eval_max_atoms: int = 8
    """Only held-out structures with at most this many atoms enter the after-training evaluation (0 = all)."""
    num_cpus: int = 0
    """CPUs of a local Ray instance (0 = all of this machine's)."""
    learner_threads: int = 0
    """Torch threads of the learner process (0 = one less than the CPUs, at least 1)."""


@dataclass(frozen=True)
class RunConfig:
    run: RunSettings = field(default_factory=RunSettings)
    env: EnvConfig = field(default_factory=EnvConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    actors: ActorConfig = field(default_factory=ActorConfig)


SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass, by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type) -> str:
    """One line per field: name, type, default and documentation."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}): {docs.get(f.name, '')}")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(section: str, key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp`` (ints widen to floats, lists become tuples)."""
    where = f"{section}.{key}"
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        return value
    raise ConfigError(
        f"{where} must be of type {_type_name(tp)}, got {value!r} ({type(value).__name__}). "
        f"Fix the value in the TOML file or the --set override."
    )


def _build_section(section: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(section + '.' + k for k in unknown)}. Valid keys of [{section}]:\n"
            + describe(cls)
        )
    return cls(**{k: _coerce(section, k, v, hints[k]) for k, v in values.items()})


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts (TOML tables), validating every key."""
    if not isinstance(data, dict):
        raise ConfigError("a run configuration must be a table of sections")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}. Valid sections: {', '.join(SECTIONS)}")
    sections = {}
    for name in SECTIONS:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
        sections[name] = _build_section(name, values)
    cfg = RunConfig(**sections)
    validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists), suitable for TOML and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, name)).items()} for name in SECTIONS}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value`` → (section, key, value); the value is read as TOML, else as a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. learner.actor_lr=1e-4")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return section, key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML preset (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; presets live in configs/ (demo.toml, tiny.toml)")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"override {text!r}: unknown section {section!r}. Valid sections: {', '.join(SECTIONS)}")
        data.setdefault(section, {})[key] = value
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path or 'defaults'}: {e}") from None


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(tomli_w.dumps(to_dict(cfg)))


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that a single field's type cannot express."""
    if cfg.env.env_input_dim != cfg.network.env_input_dim:
        raise ConfigError(
            f"env.env_input_dim ({cfg.env.env_input_dim}) and network.env_input_dim ({cfg.network.env_input_dim}) "
            "must be equal: the networks read the features the environment writes"
        )
    if not 0 <= cfg.env.env_input_dim <= 3:
        raise ConfigError(f"env.env_input_dim must be 0..3 (log10 Fmax, step fraction, last a_back), got {cfg.env.env_input_dim}")
    if not 2 <= cfg.network.num_layers <= 6:
        raise ConfigError(f"network.num_layers must be 2..6, got {cfg.network.num_layers}")
    if cfg.network.dtype not in ("float32", "float64"):
        raise ConfigError(f"network.dtype must be 'float32' or 'float64', got {cfg.network.dtype!r}")
    for name in ("expert_fraction_start", "expert_fraction_end"):
        v = getattr(cfg.learner, name)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"learner.{name} must be within [0, 1], got {v}")
    if cfg.expert.schedule not in ("linear", "exponential"):
        raise ConfigError(f"expert.schedule must be 'linear' or 'exponential', got {cfg.expert.schedule!r}")
    if list(cfg.curriculum.stages) != sorted(cfg.curriculum.stages) or not cfg.curriculum.stages:
        raise ConfigError(f"curriculum.stages must be a non-empty increasing list of atom counts, got {list(cfg.curriculum.stages)}")
