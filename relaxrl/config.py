"""Run configuration: the component dataclasses composed, loaded from TOML with overrides.

    cfg = load_config("configs/demo.toml", overrides=["learner.actor_lr=1e-4"])

Unknown sections or keys and values of the wrong type are :class:`ConfigError`s that
name the key and list the valid ones with their documentation.
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

from relaxrl.errors import RelaxRLError

from actors.config import ActorConfig, CurriculumConfig, EnvConfig, ExpertConfig
from learner.config import LearnerConfig, NetworkConfig
from replay_service.config import ReplayConfig


class ConfigError(RelaxRLError, ValueError):
    """A configuration file or override is invalid; the message says which key and how to fix it."""


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
