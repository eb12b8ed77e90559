"""Configuration of the environment, the BFGS expert schedule, the curriculum and the actors.

One frozen dataclass per component; the string under each field is its documentation
(``relaxrl config show`` prints it and config errors quote it).
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
