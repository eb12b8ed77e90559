"""The transition: one environment step, as actors write it and the replay stores it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.observation import Observation


@dataclass
class Transition:
    """One environment step as stored in replay."""

    obs: Observation
    action: np.ndarray  # [n, 3] float64, Å: a_pred, what the policy proposed (with noise)
    actual_move: np.ndarray  # [n, 3] float64, Å: a_actual, what the environment applied
    reward: float
    terminated: bool
    truncated: bool
    next_obs: Observation
    a_back: float = 0.0  # fraction of the move the environment took back (0..1)
    expert_action: np.ndarray | None = None  # [n, 3] float64, Å: a_expert (expert-table items)
    n_steps: int = 1  # environment steps this transition spans (learner.n_step): reward = Σ_k γ^k r_k over them,
    # next_obs is the state after the last one, terminated/truncated are the last step's; the TD target bootstraps
    # with γ^n_steps
    # Curvature measured at obs, for training only (expert.curvature_probes): the Hessian's columns of k atoms,
    # probe_columns[p, j] = ∂²E/∂x_j∂x_{probe_atoms[p]} (3×3 block: rows atom j's coordinates), eV/Å²
    probe_atoms: np.ndarray | None = None  # [k] int64
    probe_columns: np.ndarray | None = None  # [k, n, 3, 3] float64
