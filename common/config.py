"""Run configuration: one frozen dataclass per component, composed, loaded from TOML with overrides.

    cfg = load_config("configs/demo.toml", overrides=["learner.actor_lr=1e-4"])

This is the one home of every setting: the component dataclasses (environment, expert,
curriculum, network, replay, learner, actors, run) with a docstring under each field,
their validation (one range per field, in each dataclass's ``__post_init__``, so no
invalid config object exists), and TOML loading. Each setting has one key: the per-atom
step bound is ``env.max_step`` and the feature count ``env.env_input_dim`` (the networks
and the teachers read them there); keys of earlier versions (:data:`REMOVED_KEYS`) are
errors that name the new key, renamed keys (:data:`RENAMED_KEYS`) are read under their new
name with a warning, and the replay's two-table keys (``replay.expert_max_size`` ...) still set
the tables they named (``common.replay_tables.read_replay_values``). Unknown
sections or keys and values of the wrong type are :class:`ConfigError`s that name the key
and list the valid ones with their documentation.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import math
import textwrap
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import tomli_w
import tomllib

from common.errors import ConfigError
from common.names import ACTOR_HEAD_NAMES, CELL_HEAD_NAMES, CELL_TEACHER_NAMES, TEACHER, TEACHER_NAMES
from common.replay_tables import DEFAULT_TABLES, check_tables, read_replay_values, table_from_dict
from common.schedules import SCHEDULES

log = logging.getLogger("relaxrl.config")


def _require(section: str, checks: list[tuple[bool, str, Any, str]], obj: Any = None) -> None:
    """Raise :class:`ConfigError` for the first failed ``(ok, key, value, what is valid)`` check.

    With ``obj`` (the dataclass being built) every float field must first be finite: NaN fails
    no comparison (``nan > 0`` and ``nan <= 0`` are both False), so each range check below is
    written as the condition a valid value meets and runs only on finite numbers.
    """
    if obj is not None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {v!r}")
    for ok, key, value, valid in checks:
        if not ok:
            raise ConfigError(f"{section}.{key} must be {valid}, got {value!r}")


REMOVED_KEYS = {
    "network.max_step": "env.max_step",
    "expert.maxstep": "env.max_step",
    "network.env_input_dim": "env.env_input_dim",
}
"""Keys of earlier versions → the one key that holds the setting now (a user's file naming an old key is an error)."""

RENAMED_KEYS = {
    "expert.newton_max_atoms": "expert.teacher_max_atoms",
    "expert.newton_min_curvature": "expert.teacher_min_curvature",
}
"""Keys of earlier versions → their new name, same meaning: still read (a warning names the new key), in a user's
file, an override and a checkpoint alike."""

DROPPED_KEYS = {
    "network.per_atom_q": "the per-atom critic values were never used in the TD target; delete the key",
}
"""Settings of earlier versions that no longer exist → why (an error in a user's file; dropped from checkpoints)."""


# Upper bounds of the settings that size a search (a neighbour or pair search, a Hessian): past them the
# work grows without a useful result (env.max_step = 1000 makes a 2000 Å collision cutoff).
MAX_STEP_LIMIT = 1.0
"""Largest env.max_step, Å: a move longer than about half a bond length is not a relaxation step."""
MAX_RADIUS = 10.0
"""Largest network.radius, Å (the design notes suggest 6–7 Å for large cells)."""
MAX_NEIGHBORS_LIMIT = 256
"""Largest network.max_neighbors (neighbours kept per atom)."""
MAX_HESSIAN_ATOMS = 200
"""Largest structure (free atoms) a finite-difference Hessian is taken of: 6 force calls per atom and a
(3N)² matrix (expert.teacher_max_atoms, env.saddle_check_atoms, relaxrl eval --curvature-check)."""
MAX_MIN_DISTANCE = 4.0
"""Largest curriculum.min_distance, Å: generated clusters farther apart than this are isolated atoms."""


# ----------------------------------------------------------------- environment and actors

@dataclass(frozen=True)
class EnvConfig:
    fmax: float = 0.05
    """Convergence threshold on the largest per-atom force norm, eV/Å."""
    max_steps: int = 200
    """Steps before an episode is truncated (truncation is not termination)."""
    calculator: str = "emt"
    """ASE calculator by name: 'emt', 'chgnet' (the mlip extra) or an importable 'module:Class' / 'module.Class' (actors/calculators.py)."""
    calculator_kwargs: dict = field(default_factory=dict)
    """Keyword arguments passed to the calculator's constructor ('chgnet': model_name, device = 'auto' | 'cpu' | 'cuda')."""
    max_step: float = 0.2
    """Largest displacement of one atom in one step, Å (longer moves are shortened)."""
    min_distance_factor: float = 0.6
    """Moves that bring a pair closer than this × (r_cov,i + r_cov,j) are scaled back, and structures with a pair
    closer than that are refused; in [0, 1) (0 = no collision check)."""
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
    w_energy: float = 0.0
    """Reward weight of the energy drop per atom since the previous step, (E_prev − E)/n_atoms in eV/atom. Over an
    episode these terms sum to the whole drop, so a deeper end point earns more whatever the path (the suite judges
    success by energy; the force terms alone pay as much for a saddle or a higher minimum). 0 = off."""
    saddle_check_atoms: int = 0
    """Training only: on a converged step of a structure with at most this many free atoms the environment finds the
    lowest Hessian eigenvalue (finite differences on its own calculator, 6 force calls per free atom, never counted
    as the episode's) and on a saddle point (below −0.05 eV/Å², as ``relaxrl eval --curvature-check``) withholds
    ``converged_bonus``: the episode still ends, but a saddle pays no more than any other step. 0 = off."""
    reference_tolerance: float = 0.0
    """Training only, meV/atom: a converged step more than this above the structure's reference minimum (the lowest
    minimum the run's actors have reached on it, which the curriculum hands out with the structure) earns no
    ``converged_bonus``, as a saddle under ``saddle_check_atoms`` earns none: the bonus then pays for the eval's
    success rule (reference + 1 meV/atom), and saddles lose it too once a lower minimum is known, at no force call
    (actors/env.py). 0 = off."""
    history_steps: int = 1
    """Steps of path history every observation carries (actual move and force change per atom, newest first): the
    memory of the 'quasi-newton' actor head (its L-BFGS pairs); the other heads read the newest step only."""
    relax_cell: bool = False
    """Relax the cell too, as ASE's optimizers on FrechetCellFilter(atoms) do: the environment moves the filter's
    generalised rows (n atom rows + 3 cell rows, exp_cell_factor·log of the deformation) with the calculator's
    stress; fmax, the reward's Fmax and Fmean run over all rows (the filter's generalised forces); a move has n + 3
    rows. Needs periodic structures, a calculator with stress, network.actor_head 'quasi-newton' and expert.teacher
    'bfgs' (actors/cell_filter.py)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`ConfigError` for the first setting out of its range: the one check of the environment's
        settings, run when the config is built and again by every ``RelaxEnv``."""
        _require("env", [
            (self.fmax > 0, "fmax", self.fmax, "a positive force threshold in eV/Å, e.g. 0.05"),
            (self.max_steps >= 1, "max_steps", self.max_steps,
             "at least 1 step per episode (0 would end every episode at reset and stop every actor), e.g. 200"),
            (0 < self.max_step <= MAX_STEP_LIMIT, "max_step", self.max_step,
             f"a positive bound in Å of at most {MAX_STEP_LIMIT:g}, e.g. 0.2"),
            # below 1: sums of covalent radii are about bond lengths (Cu–Cu 2.64 Å, 2.55 Å in fcc Cu), so a collision
            # distance of 1× or more would refuse relaxed structures and hold atoms out of their minima
            (0 <= self.min_distance_factor < 1, "min_distance_factor", self.min_distance_factor,
             "a factor in [0, 1) of the covalent-radii sum (1 or more is a bond length: minima would count as "
             "collisions), e.g. 0.6"),
            (0 <= self.env_input_dim <= 3, "env_input_dim", self.env_input_dim,
             "0..3 (log10 Fmax, step fraction, last a_back)"),
            (self.w_back >= 0, "w_back", self.w_back, "a penalty weight >= 0"),
            (self.w_energy >= 0 and math.isfinite(self.w_energy), "w_energy", self.w_energy,
             "a finite weight >= 0 on the energy drop in eV/atom, e.g. 20 (0 = off)"),
            (0 <= self.saddle_check_atoms <= MAX_HESSIAN_ATOMS, "saddle_check_atoms", self.saddle_check_atoms,
             f"the most free atoms whose Hessian is checked at convergence, 0..{MAX_HESSIAN_ATOMS}, e.g. 24 (0 = off)"),
            (self.reference_tolerance >= 0 and math.isfinite(self.reference_tolerance), "reference_tolerance",
             self.reference_tolerance, "a finite tolerance >= 0 in meV/atom above the reference minimum, e.g. 1 (0 = off)"),
            (1 <= self.history_steps <= 16, "history_steps", self.history_steps, "1..16 remembered steps, e.g. 5"),
        ], self)


@dataclass(frozen=True)
class ExpertConfig:
    p_start: float = 1.0
    """Probability that an expert actor's step is a fake step (the teacher's, expert.teacher) at t_total = 0 (the nfake
    schedule)."""
    p_end: float = 0.1
    """Probability of a fake step at the end of the schedule."""
    decay_steps: int = 20000
    """t_total over which the fake-step probability moves from p_start to p_end."""
    schedule: str = "linear"
    """Shape of the decay: 'linear' or 'exponential' (common.schedules)."""
    teacher: str = "bfgs"
    """What a fake step is: 'bfgs' (one ase.optimize.BFGS iteration), 'newton' (a saddle-free Newton step on a
    finite-difference Hessian) or 'compliance' (the 'quasi-newton' head's own move with the exact per-atom
    compliance of that Hessian: a step the head can learn to make), 'model-hessian' (the 'model-hessian' head's
    move on a model Hessian fitted to that Hessian) or 'bfgsls' (one ase.optimize.BFGSLineSearch iteration; its line
    search's trial points are the teacher's force calls). 'newton', 'compliance' and 'model-hessian' cost 6 extra
    force calls per free atom, training only; structures above teacher_max_atoms get no fake step. All are
    bounded by env.max_step (actors/expert.py); the teachers' training-only force calls are reported as
    actors/teacher_force_calls."""
    teacher_max_atoms: int = 24
    """Largest structure (atoms) the Hessian teachers ('newton', 'compliance', 'model-hessian') take a fake step on;
    on larger ones the expert actor's policy acts (into the online table). The other teachers step on any size."""
    teacher_min_curvature: float = 0.5
    """Smallest |eigenvalue| (eV/Å²) the Hessian teachers ('newton', 'compliance') divide by: softer or negative
    modes move as if this stiff; the 'model-hessian' teacher's smallest per-atom diagonal."""
    curvature_probes: int = 0
    """Atoms whose Hessian columns every expert-actor transition carries (0 = none): the supervised curvature
    signal of the 'model-hessian' head (learner.curvature_weight). Sliced from a Hessian teacher's Hessian where
    it just took one at that state, else measured by finite differences (6 force calls per atom on a calculator
    of the actor's own); training only, counted in actors/teacher_force_calls."""

    def __post_init__(self) -> None:
        _require("expert", [
            (self.teacher in TEACHER_NAMES, "teacher", self.teacher, " or ".join(map(repr, TEACHER_NAMES))),
            (1 <= self.teacher_max_atoms <= MAX_HESSIAN_ATOMS, "teacher_max_atoms", self.teacher_max_atoms,
             f"1..{MAX_HESSIAN_ATOMS} atoms, e.g. 24"),
            (0 <= self.curvature_probes <= 64, "curvature_probes", self.curvature_probes, "0..64 atoms per transition"),
            (self.teacher_min_curvature > 0, "teacher_min_curvature", self.teacher_min_curvature,
             "a positive curvature in eV/Å², e.g. 0.5"),
            (0.0 <= self.p_start <= 1.0, "p_start", self.p_start, "a probability in [0, 1]"),
            (0.0 <= self.p_end <= 1.0, "p_end", self.p_end, "a probability in [0, 1]"),
            (self.decay_steps >= 0, "decay_steps", self.decay_steps, ">= 0 (0 = p_end at once)"),
            (self.schedule in SCHEDULES, "schedule", self.schedule, " or ".join(map(repr, SCHEDULES))),
        ], self)


@dataclass(frozen=True)
class CurriculumConfig:
    source: str = "demo"
    """Structure source: 'demo' (generated EMT clusters, bulk and slabs), a directory of
    CIF/POSCAR/extxyz files, or 'alfe' (Al–Fe cells of 2–8 atoms relaxed under env.calculator,
    actors/alfe.py)."""
    n_structures: int = 64
    """Number of generated structures (source='demo')."""
    n_molecules: int = 0
    """Generated rattled H/C/N/O molecules added to them (source='demo'; actors.generate.TRAINING_MOLECULES)."""
    n_adsorbates: int = 0
    """Generated adsorbates on slabs with the two bottom layers fixed (source='demo')."""
    n_large: int = 0
    """Generated 96–128-atom rattled bulk and slabs added to them (source='demo'); a curriculum stage of at least
    128 atoms lets episodes reach them (e.g. stages = [8, 16, 32, 64, 128])."""
    n_large_clusters: int = 0
    """Generated compact random clusters of 20–64 atoms added to them (source='demo'; actors.generate.large_clusters):
    the generated clusters otherwise stop at 16 atoms. A stage of at least 64 atoms reaches them all."""
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
    strain: float = 0.0
    """Episodes on periodic structures start from a randomly strained cell: a symmetric strain whose components are
    uniform in ±this (e.g. 0.05), drawn anew per episode with the atoms following the cell, besides any atom
    displacement. 0 = off. Meant for env.relax_cell."""

    def __post_init__(self) -> None:
        stages = list(self.stages)
        _require("curriculum", [
            (min(self.n_structures, self.n_molecules, self.n_adsorbates, self.n_large, self.n_large_clusters) >= 0,
             "n_structures", (self.n_structures, self.n_molecules, self.n_adsorbates, self.n_large, self.n_large_clusters),
             "counts >= 0 (n_structures, n_molecules, n_adsorbates, n_large, n_large_clusters)"),
            (0.0 <= self.heldout_fraction < 1.0, "heldout_fraction", self.heldout_fraction, "a share in [0, 1)"),
            (bool(stages) and stages == sorted(stages) and all(isinstance(x, int) and x >= 1 for x in stages),
             "stages", stages, "a non-empty increasing list of atom counts"),
            (self.unlock_t_total >= 0, "unlock_t_total", self.unlock_t_total, ">= 0 (0 = never by steps)"),
            (self.success_window >= 1, "success_window", self.success_window, "at least 1 episode"),
            (self.rattle >= 0, "rattle", self.rattle, "a standard deviation >= 0 in Å"),
            (0 < self.min_distance <= MAX_MIN_DISTANCE, "min_distance", self.min_distance,
             f"a positive distance in Å of at most {MAX_MIN_DISTANCE:g}, e.g. 2.0"),
            (0.0 <= self.strain < 0.5, "strain", self.strain, "a strain in [0, 0.5), e.g. 0.05 (0 = off)"),
        ], self)


@dataclass(frozen=True)
class ActorConfig:
    num_online: int = 1
    """Online actors (policy + exploration noise)."""
    num_expert: int = 1
    """Expert actors (the teacher's fake steps, expert.teacher, per the nfake schedule)."""
    envs_per_actor: int = 4
    """Environments stepped together by one actor with one batched policy forward."""
    sigma_start: float = 0.05
    """Exploration noise standard deviation (Å) at t_total = 0."""
    sigma_end: float = 0.01
    """Exploration noise standard deviation (Å) at the end of the decay."""
    sigma_decay_steps: int = 20000
    """t_total over which sigma decays linearly."""
    noise_force_scale: float = 1.0
    """Per-atom noise is sigma·min(1, |F_i| / this) (eV/Å): full exploration far from a minimum, little near one,
    where a 0.03 Å kick alone would exceed fmax."""
    insert_batch: int = 16
    """Transitions buffered before one batched insert into the replay."""
    max_restarts: int = 3
    """Ray restarts of a crashed actor."""
    num_cpus: float = 0.5
    """CPUs Ray reserves per actor."""
    num_gpus: float = 0.0
    """GPUs Ray reserves per actor for its calculator (fractional allowed, e.g. 0.25: four actors share one GPU; 0 = CPU only)."""

    def __post_init__(self) -> None:
        _require("actors", [
            (self.num_online >= 0, "num_online", self.num_online, ">= 0 actors"),
            (self.num_expert >= 0, "num_expert", self.num_expert, ">= 0 actors"),
            (self.num_online + self.num_expert >= 1, "num_online + num_expert", self.num_online + self.num_expert,
             "at least 1 (with no actor nothing fills the replay and the learner would wait forever)"),
            (self.envs_per_actor >= 1, "envs_per_actor", self.envs_per_actor, "at least 1"),
            (self.sigma_start >= 0 and self.sigma_end >= 0, "sigma_start/sigma_end", (self.sigma_start, self.sigma_end),
             "noise standard deviations >= 0 in Å"),
            (self.sigma_decay_steps >= 0, "sigma_decay_steps", self.sigma_decay_steps, ">= 0"),
            (self.noise_force_scale > 0, "noise_force_scale", self.noise_force_scale, "a positive force in eV/Å"),
            (self.insert_batch >= 1, "insert_batch", self.insert_batch, "at least 1 transition"),
            (self.max_restarts >= -1, "max_restarts", self.max_restarts, ">= 0 restarts (-1 = unlimited)"),
            (self.num_cpus > 0, "num_cpus", self.num_cpus, "a positive CPU share per actor, e.g. 0.5"),
            (self.num_gpus >= 0, "num_gpus", self.num_gpus, "a GPU share >= 0 per actor, e.g. 0.25 (0 = CPU only)"),
        ], self)


# ----------------------------------------------------------------- networks and learner

@dataclass(frozen=True)
class NetworkConfig:
    """The e3nn networks. They read env.env_input_dim (global env features fused late; 0 = plain
    geometric model: no tail_mlp, no env gate) and env.max_step (bound on each atom's displacement)."""

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
    species: str = "table"
    """How an element enters the network: 'table' (a learned embedding row per atomic number; rows
    of elements never seen in training stay at their random start) or 'descriptors' (an MLP of the
    element's covalent radius, period, group and log mass from ase.data, so an unseen element sits
    between the ones it resembles)."""
    avg_num_neighbors: float = 12.0
    """Messages summed at a receiver are divided by this (keeps feature scale independent of the radius)."""
    tail_hidden: int = 32
    """Hidden width of the small MLPs on env features (actor env gate, critic tail_mlp)."""
    dtype: str = "float32"
    """Torch dtype of the networks: 'float32' or 'float64'."""
    path_history: bool = False
    """Feed the path history (previous actual move and the force change it caused: two 1o vectors per atom, plus
    their invariants) to actor and critic, the curvature information quasi-Newton methods use."""
    actor_head: str = "free"
    """'free': the displacement is the squashed 1o head output. 'preconditioned': d_i = α_i·F_i + β_i·m_i + c_i
    with learned per-atom invariants α_i > 0 (Å²/eV) and β_i ∈ (0, 0.95), m_i the previous move and c_i a 1o
    correction bounded by step_size·|F_i| (starts as heavy-ball steepest descent; displacements vanish with
    the forces). 'quasi-newton': d = H·F with H the L-BFGS inverse Hessian of the env.history_steps remembered
    steps on a learned per-atom 3×3 compliance, scaled so the longest atom move is ≤ env.max_step (starts as
    L-BFGS; learner/heads.py QuasiNewtonActor). 'model-hessian': the same L-BFGS on a learned sparse model
    Hessian that couples neighbouring atoms (per-edge stiffness blocks along and across each bond, solved by
    conjugate gradients; starts as L-BFGS; learner/heads.py ModelHessianActor)."""
    step_size: float = 0.1
    """α at initialisation of the 'preconditioned' head, Å²/eV (about 1/curvature of a metal bond); the
    'quasi-newton' head's compliance at initialisation (its first step is step_size·F)."""
    momentum: float = 0.5
    """β at initialisation of the 'preconditioned' head (weight of the previous move)."""
    cg_iterations: int = 30
    """Most conjugate-gradient iterations of the 'model-hessian' head's solve P⁻¹·v per move (fewer once the
    residual is 1e-6 of its start): the same in training and in RLOptimizer."""
    edge_vectors: int = 0
    """'model-hessian' head: rank-one terms u·uᵀ added to each edge's block αI + βr̂r̂ᵀ, u from the 1o features of
    the edge's atoms (0 = the pair-potential form alone; 3 = any symmetric positive semi-definite block)."""

    def __post_init__(self) -> None:
        _require("network", [
            (2 <= self.num_layers <= 6, "num_layers", self.num_layers, "2..6 interaction layers"),
            (1 <= self.lmax <= 3, "lmax", self.lmax, "1..3 (lmax 0 has no vectors, so no displacement)"),
            (self.channels >= 1, "channels", self.channels, "a positive multiplicity, e.g. 16"),
            (0 < self.radius <= MAX_RADIUS, "radius", self.radius, f"a positive cutoff in Å of at most {MAX_RADIUS:g}, "
             "e.g. 5.0"),
            (self.actor_head in ACTOR_HEAD_NAMES, "actor_head", self.actor_head, " or ".join(map(repr, ACTOR_HEAD_NAMES))),
            (self.step_size > 0, "step_size", self.step_size, "a positive step in Å²/eV, e.g. 0.1"),
            (0.0 <= self.momentum < 0.95, "momentum", self.momentum, "a weight in [0, 0.95), e.g. 0.5"),
            (self.num_basis >= 1, "num_basis", self.num_basis, "a positive size"),
            (self.radial_hidden >= 1, "radial_hidden", self.radial_hidden, "a positive size"),
            (self.avg_num_neighbors > 0, "avg_num_neighbors", self.avg_num_neighbors, "a positive normalisation, e.g. 12"),
            (self.dtype in ("float32", "float64"), "dtype", self.dtype, "'float32' or 'float64'"),
            (0 <= self.max_neighbors <= MAX_NEIGHBORS_LIMIT, "max_neighbors", self.max_neighbors,
             f"0..{MAX_NEIGHBORS_LIMIT} (0 = no cap)"),
            (1 <= self.max_species <= 118, "max_species", self.max_species, "1..118"),
            (self.species in ("table", "descriptors"), "species", self.species, "'table' or 'descriptors'"),
            (self.tail_hidden >= 1, "tail_hidden", self.tail_hidden, "a positive size"),
            (1 <= self.cg_iterations <= 500, "cg_iterations", self.cg_iterations, "1..500 conjugate-gradient iterations"),
            (0 <= self.edge_vectors <= 3, "edge_vectors", self.edge_vectors, "0..3 rank-one terms per edge block"),
        ], self)


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.95
    """Discount factor."""
    n_step: int = 1
    """Environment steps per stored transition (Ape-X's n-step returns): the actors store Σ_k γ^k r_k over n steps
    with the state after them, the TD target bootstraps with γ^n. Larger n carries the convergence bonus back to
    earlier states in fewer updates; 1 = one-step TD3."""
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
    target_noise_by_force: bool = True
    """Scale each atom's target-policy smoothing noise by min(1, |F_i| / actors.noise_force_scale), as the actors
    scale their exploration noise (false: the same noise on every atom; near a minimum that kick alone exceeds
    fmax, and the TD target then values moves no actor makes there; docs/RESULTS.md compares the two)."""
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
    keep_checkpoints: int = 3
    """Checkpoints kept in run_dir/checkpoints, the newest (0 = every one: about 1 MB each in the presets, for
    evaluating the policy along the run with ``relaxrl eval --checkpoint FILE``)."""
    log_every: int = 10
    """Append a metrics.jsonl row every this many updates."""
    max_nonfinite: int = 20
    """Consecutive non-finite losses that stop the run."""
    normalize_actor_loss: bool = True
    """Scale −Q by mean|Q| and measure the penalties in units of env.max_step (TD3+BC), so λ_dev and λ_bc do not
    depend on the reward scale."""
    relative_bc: float = 0.005
    """δ (Å) of the relative behaviour-cloning error ‖π − a_expert‖² / (‖a_expert‖² + δ²) per graph (0 = absolute
    error in units of max_step)."""
    curvature_weight: float = 1.0
    """Weight of the curvature loss in the actor loss: how far the 'model-hessian' head's model Hessian is from the
    Hessian columns the expert actors measured (expert.curvature_probes; learner/curvature.py). No effect on other
    heads or without probes."""
    actor_q_weight: float = 1.0
    """Weight of −Q1(s, π(s)) in the actor loss (1: TD3+BC). 0 is an ablation: the actor then learns only from
    behaviour cloning, the deviation penalty and the curvature loss, and the critic only reports."""
    curvature_lr: float = 2e-3
    """Adam learning rate of the 'model-hessian' head's readout (the layers that turn trunk features into the model
    Hessian; the trunk learns at actor_lr): the edge blocks start near zero and must grow by orders of magnitude."""
    policy_average: int = 0
    """The policy is the average of the actor's weights over about this many of the newest updates (0 = the actor
    as it is): a running mean over the first ``policy_average`` updates, then an exponential moving average
    with rate 1/``policy_average``. It is what checkpoints give ``relaxrl eval``/``relax``/``RLOptimizer`` and what the
    live evaluation judges; the actors still explore with the actor itself."""
    grad_clip: float = 10.0
    """Global gradient-norm clip (0 = none)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        _require("learner", [
            (self.batch_size >= 1, "batch_size", self.batch_size, "at least 1 transition per update, e.g. 256"),
            (0.0 <= self.gamma <= 1.0, "gamma", self.gamma, "a discount in [0, 1], e.g. 0.95"),
            (0.0 < self.tau <= 1.0, "tau", self.tau, "a Polyak rate in (0, 1], e.g. 0.005"),
            (1 <= self.n_step <= 16, "n_step", self.n_step, "1..16 environment steps per transition, e.g. 3"),
            (self.actor_lr > 0, "actor_lr", self.actor_lr, "a positive learning rate, e.g. 3e-4"),
            (self.critic_lr > 0, "critic_lr", self.critic_lr, "a positive learning rate, e.g. 3e-4"),
            (self.policy_delay >= 1, "policy_delay", self.policy_delay, "at least 1, e.g. 2"),
            (self.target_noise >= 0, "target_noise", self.target_noise, "a standard deviation >= 0 in Å"),
            (self.target_noise_clip >= 0, "target_noise_clip", self.target_noise_clip, "a clip >= 0 in Å"),
            (self.lambda_dev >= 0, "lambda_dev", self.lambda_dev, "a weight >= 0"),
            (self.bc_start >= 0 and self.bc_end >= 0, "bc_start/bc_end", (self.bc_start, self.bc_end), "weights >= 0"),
            *[(0.0 <= getattr(self, k) <= 1.0, k, getattr(self, k), "within [0, 1]")
              for k in ("expert_fraction_start", "expert_fraction_end")],
            (0.0 <= self.beta_start <= 1.0, "beta_start", self.beta_start, "an exponent in [0, 1], e.g. 0.4"),
            (self.priority_eps > 0, "priority_eps", self.priority_eps,
             "a positive ε (a priority of 0 is never sampled), e.g. 1e-3"),
            *[(getattr(self, k) >= 0, k, getattr(self, k), ">= 0")
              for k in ("bc_decay_updates", "expert_fraction_decay_updates", "beta_anneal_updates")],
            (self.max_updates >= 0, "max_updates", self.max_updates, ">= 0 (0 = until time_limit_s)"),
            (self.time_limit_s >= 0, "time_limit_s", self.time_limit_s, ">= 0 seconds (0 = none)"),
            (self.max_updates > 0 or self.time_limit_s > 0, "max_updates", self.max_updates,
             "> 0 or learner.time_limit_s > 0 (with both 0 training never ends)"),
            *[(getattr(self, k) >= 1, k, getattr(self, k), "at least 1 update")
              for k in ("publish_every", "checkpoint_every", "log_every", "max_nonfinite")],
            (self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, ">= 0 checkpoints (0 = all)"),
            (self.relative_bc >= 0, "relative_bc", self.relative_bc, ">= 0 Å"),
            (self.curvature_weight >= 0, "curvature_weight", self.curvature_weight, "a weight >= 0"),
            (self.actor_q_weight >= 0, "actor_q_weight", self.actor_q_weight, "a weight >= 0 (1 = TD3+BC)"),
            (self.curvature_lr > 0, "curvature_lr", self.curvature_lr, "a positive learning rate, e.g. 2e-3"),
            (self.policy_average >= 0, "policy_average", self.policy_average, ">= 0 updates (0 = off), e.g. 1000"),
            (self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0 (0 = none)"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device,
             "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ], self)


# ----------------------------------------------------------------- replay

@dataclass(frozen=True)
class ReplayConfig:
    url: str = ""
    """Redis URL (redis://, rediss://, unix://); empty = embedded redis-server in the run directory."""
    tables: tuple = DEFAULT_TABLES
    """The replay tables, a list of specs (TOML: one [[replay.tables]] block each): name, max_size, share of each
    batch, priority_exponent α, source ('teacher' or 'policy': which actor steps go in) and rate_limiter
    ({kind = 'none' | 'min_size' | 'sample_to_insert_ratio', ...}); common/replay_tables.py. Default: 'expert'
    (2000, share 0.25, teacher steps, kind 'none') and 'online' (5000, share 0.75, policy steps, min_size 64).
    The two-table keys (expert_max_size, online_max_size, alpha, min_size_to_sample, samples_per_insert,
    error_buffer, expert_rate_limited) still set the tables they named; --set replay.tables.NAME.FIELD=V edits one."""
    namespace: str = "relaxrl"
    """Prefix of every Redis key, so several runs can share one server."""
    appendfsync: str = "everysec"
    """Embedded Redis AOF fsync policy: 'everysec' or 'always'."""
    metrics_port: int = 0
    """Port of the replay service's Prometheus endpoint (0 = off)."""
    connect_timeout: float = 10.0
    """Seconds a client keeps retrying (exponential backoff) an unreachable Redis before it fails."""
    insert_chunk: int = 512
    """Most transitions reserved, stored and published in one step of an insert (larger inserts are split)."""
    password_file: str = ""
    """File holding the Redis password (first line), used with replay.url / --redis-url instead of a password in
    the URL; the RELAXRL_REDIS_PASSWORD environment variable is the other way. Run files store URLs without it."""

    def __post_init__(self) -> None:
        # each table checks itself when built (TableSpec, its rate limiter); the list's rules here
        object.__setattr__(self, "tables", tuple(table_from_dict(t, f"replay.tables[{i}]") for i, t in enumerate(self.tables)))
        check_tables(self.tables)
        _require("replay", [
            (bool(self.namespace) and not any(c.isspace() for c in self.namespace), "namespace", self.namespace,
             "a non-empty prefix without spaces"),
            (self.appendfsync in ("everysec", "always", "no"), "appendfsync", self.appendfsync, "'everysec', 'always' or 'no'"),
            (0 <= self.metrics_port <= 65535, "metrics_port", self.metrics_port, "a port 1..65535 (0 = off)"),
            (self.connect_timeout > 0, "connect_timeout", self.connect_timeout, "a positive number of seconds"),
            (self.insert_chunk >= 1, "insert_chunk", self.insert_chunk, "at least 1 transition"),
        ], self)


# ----------------------------------------------------------------- the run

@dataclass(frozen=True)
class RunSettings:
    name: str = "demo"
    """Name of the preset; shown in reports."""
    id: str = ""
    """Identity of the run, set by `relaxrl train` when it creates the run directory (a fresh random string for
    every new run, whatever a preset says) and kept in its config.toml and every checkpoint: relax, eval and
    --resume refuse a checkpoint of another run found in a run directory. Leave it empty."""
    seed: int = 0
    """Seed of structures, networks, noise and sampling (0 ≤ seed < 2**31)."""
    run_dir: str = ""
    """Run directory (empty = runs/<name>-<timestamp>)."""
    metrics_port: int = 0
    """Ray metrics export port of a local Ray head started by `relaxrl train` (0 = Ray picks one)."""
    eval_episodes: int = 16
    """Held-out structures evaluated after training (trained vs untrained policy)."""
    eval_max_atoms: int = 8
    """Only held-out structures with at most this many atoms enter the after-training evaluation (0 = all)."""
    eval_large: int = 0
    """Structures of the large suite (100–256 atoms, `relaxrl eval --structures suite-large`) the after-training
    evaluation adds to the held-out ones, 600 steps each: the first of each kind, in the order of
    actors/suite.py LARGE_SAMPLE_KINDS (0 = none)."""
    eval_every: int = 0
    """Live evaluation every this many learner updates (0 = off): the current actor, greedy, on `eval_sample`
    held-out structures; success and force calls vs BFGS go into that update's metrics.jsonl row (`eval/*`).
    A multiple of learner.log_every."""
    eval_early: tuple = ()
    """Updates before the first multiple of `eval_every` at which the live evaluation also runs, e.g. [20, 60, 100]:
    a model Hessian's fit gains most in its first few hundred updates, and these points show that gain as it lands.
    Each a multiple of learner.log_every; needs eval_every > 0."""
    eval_sample: int = 4
    """Structures of the live evaluation: the first N held-out ones with at most `eval_max_atoms` atoms,
    the same for the whole run."""
    eval_sample_large: int = 0
    """Large-suite structures (100–256 atoms, as `run.eval_large` takes them) the live evaluation adds to its
    sample, `relaxrl eval --structures suite-large`'s 600 steps each: where a learned model Hessian has room to
    show (0 = none). Each costs the learner a few seconds per live evaluation."""
    actor_stall_s: float = 300.0
    """Training stops (final checkpoint, then one error line) when t_total has not grown for this many seconds while
    the learner keeps updating: every actor has stopped and the learner would only replay old data (0 = never). A
    learner's sample waits at most this long (at least 300 s) for the rate limiters: slow calculators on a busy
    machine can take minutes to fill min_size_to_sample."""
    num_cpus: int = 0
    """CPUs of a local Ray instance (0 = all of this machine's)."""
    learner_threads: int = 0
    """Torch threads of the learner process (0 = one less than the CPUs, at least 1)."""

    def __post_init__(self) -> None:
        _require("run", [
            (bool(self.name.strip()) and "/" not in self.name, "name", self.name, "a non-empty name without '/'"),
            (0 <= self.seed < 2**31, "seed", self.seed, f"an integer seed in 0..{2**31 - 1}, e.g. 0"),
            (all(c.isalnum() or c in "-_" for c in self.id), "id", self.id,
             "empty or letters, digits, '-' and '_' (relaxrl train sets it; leave it empty)"),
            (0 <= self.metrics_port <= 65535, "metrics_port", self.metrics_port, "a port 1..65535 (0 = Ray picks)"),
            (self.eval_episodes >= 0, "eval_episodes", self.eval_episodes, ">= 0"),
            (self.eval_max_atoms >= 0, "eval_max_atoms", self.eval_max_atoms, ">= 0 (0 = all)"),
            (self.eval_large >= 0, "eval_large", self.eval_large, ">= 0 (0 = no large-suite structures)"),
            (self.eval_every >= 0, "eval_every", self.eval_every, ">= 0 (0 = no live evaluation)"),
            (self.eval_sample >= 1, "eval_sample", self.eval_sample, ">= 1"),
            (all(isinstance(x, int) and x >= 1 for x in self.eval_early) and list(self.eval_early) == sorted(set(self.eval_early)),
             "eval_early", list(self.eval_early), "an increasing list of update counts >= 1, e.g. [20, 60, 100]"),
            (not self.eval_early or self.eval_every > 0, "eval_early", list(self.eval_early),
             "empty while eval_every = 0 (no live evaluation); set run.eval_every too"),
            (self.eval_sample_large >= 0, "eval_sample_large", self.eval_sample_large, ">= 0 (0 = none)"),
            (self.actor_stall_s >= 0, "actor_stall_s", self.actor_stall_s, ">= 0 seconds (0 = never)"),
            (self.num_cpus >= 0, "num_cpus", self.num_cpus, ">= 0 (0 = all of this machine's)"),
            (self.learner_threads >= 0, "learner_threads", self.learner_threads, ">= 0 (0 = automatic)"),
        ], self)


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

    def __post_init__(self) -> None:
        """Checks that need two sections (each section checks its own fields when built)."""
        capacity = sum(t.max_size for t in self.replay.tables)
        _require("learner", [
            (self.learner.batch_size <= capacity, "batch_size", self.learner.batch_size,
             f"at most the replay tables' total max_size ({capacity}): a batch is drawn from them"),
        ])
        for t in self.replay.tables:  # rate-limiter rules that would deadlock the learner
            t.rate_limiter.check_batch(t.name, self.learner.batch_size)
        _require("actors", [
            (self.actors.num_expert == 0 or any(t.source == TEACHER for t in self.replay.tables), "num_expert",
             self.actors.num_expert, "0 when no replay table has source = 'teacher' (the expert actors' teacher "
             "steps go there); add such a table to replay.tables"),
        ])
        if self.env.relax_cell:
            _require("env", [
                (self.network.actor_head in CELL_HEAD_NAMES, "relax_cell", self.env.relax_cell,
                 f"false with network.actor_head = {self.network.actor_head!r}, which has no cell action; relaxing the "
                 f"cell needs network.actor_head = {' or '.join(map(repr, CELL_HEAD_NAMES))}"),
                (self.expert.teacher in CELL_TEACHER_NAMES, "relax_cell", self.env.relax_cell,
                 f"false with expert.teacher = {self.expert.teacher!r}, whose fake steps move atoms only; relaxing the "
                 f"cell needs expert.teacher = {' or '.join(map(repr, CELL_TEACHER_NAMES))} (BFGS on the cell filter)"),
            ])
        _require("run", [
            (self.run.eval_every % self.learner.log_every == 0, "eval_every", self.run.eval_every,
             f"a multiple of learner.log_every ({self.learner.log_every}): the live evaluation goes into the "
             "metrics.jsonl row of its update"),
            (all(x % self.learner.log_every == 0 for x in self.run.eval_early), "eval_early", list(self.run.eval_early),
             f"multiples of learner.log_every ({self.learner.log_every}): each live evaluation goes into the "
             "metrics.jsonl row of its update"),
        ])


SECTIONS = {f.name: typing.get_type_hints(RunConfig)[f.name] for f in dataclasses.fields(RunConfig)}


@cache
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


def rename_old_keys(data: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """A config's sections (nested dicts) with the keys of :data:`RENAMED_KEYS` under their new names, a warning
    for each with ``warn``; setting both the old and the new name is a :class:`ConfigError`."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, new in RENAMED_KEYS.items():
        (section, key), new_key = old.split("."), new.split(".")[1]
        values = out.get(section)
        if not isinstance(values, dict) or key not in values:
            continue
        if new_key in values:
            raise ConfigError(f"{old} and {new} are both set; {old} is the old name of {new}: keep only {new}")
        values[new_key] = values.pop(key)
        if warn:
            log.warning("config: %s is now called %s; its value is used as %s (rename the key to silence this)",
                        old, new, new)
    return out


def _build_section(section: str, values: dict[str, Any]) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    if section == "replay":  # the table list, the two-table keys that edit it, tables.NAME.FIELD edits
        values = read_replay_values(values)
    for k in values:
        if f"{section}.{k}" in REMOVED_KEYS:
            raise ConfigError(f"{section}.{k} was removed: set {REMOVED_KEYS[section + '.' + k]}")
        if f"{section}.{k}" in DROPPED_KEYS:
            raise ConfigError(f"{section}.{k} was removed: {DROPPED_KEYS[section + '.' + k]}")
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
    data = rename_old_keys(data)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}. Valid sections: {', '.join(SECTIONS)}")
    sections = {}
    for name in SECTIONS:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table of keys, got {values!r}")
        sections[name] = _build_section(name, values)
    return RunConfig(**sections)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists), suitable for TOML and checkpoints."""

    def plain(v: Any) -> Any:
        if hasattr(v, "to_dict"):  # a replay table spec
            return plain(v.to_dict())
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {name: {f.name: plain(getattr(getattr(cfg, name), f.name)) for f in dataclasses.fields(getattr(cfg, name))}
            for name in SECTIONS}


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
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ConfigError(f"config file {p} {what}; presets live in configs/ (demo.toml, tiny.toml)")
        try:
            data = tomllib.loads(p.read_bytes().decode("utf-8"))
        except OSError as e:
            raise ConfigError(f"config file {p} cannot be read ({e.strerror or e}); check its permissions") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {p} is not a TOML text file (a checkpoint or a binary file?); "
                              "presets live in configs/ (demo.toml, tiny.toml)") from None
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

