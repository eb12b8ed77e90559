"""The BFGS expert (one ``ase.optimize.BFGS`` iteration per call) and the nfake schedule.

:class:`BFGSExpert` keeps the same state as ``ase.optimize.BFGS`` (Hessian, previous
positions and forces) and returns the displacement BFGS would apply from the observed
state: the Hessian update from the previous step, the eigen-decomposition step
``dx = V (Vᵀ f / |ω|)``, and the uniform rescaling that makes the longest atom move
``maxstep`` Å (the actors pass ``env.max_step``). It never jumps to the minimum. Followed
alone through :class:`RelaxEnv` (``maxstep ≤ env.max_step`` and no collision correction), it reproduces
``ase.optimize.BFGS`` step for step — ``tests/test_expert.py`` checks this.
"""
from __future__ import annotations

import numpy as np

from common.config import ExpertConfig
from common.errors import RelaxRLError
from common.observation import Observation
from common.schedules import SCHEDULES

__all__ = ["BFGSExpert", "ExpertError", "fake_step_probability"]


class ExpertError(RelaxRLError, ValueError):
    """An invalid expert setting."""


class BFGSExpert:
    """One BFGS iteration per :meth:`action`; :meth:`reset` at each new episode."""

    def __init__(self, maxstep: float = 0.2, alpha: float = 70.0):
        if not maxstep > 0:
            raise ExpertError(f"BFGSExpert maxstep must be > 0 Å, got {maxstep}")
        self.maxstep = float(maxstep)
        """Largest atom move of one step, Å."""
        self.alpha = float(alpha)
        """Initial Hessian guess alpha·I, eV/Å²."""
        self.reset()

    def reset(self) -> None:
        """Forget the Hessian history (a new structure)."""
        self.hessian: np.ndarray | None = None  # [3n, 3n] eV/Å²
        self.pos0: np.ndarray | None = None  # [3n] Å, positions of the previous call
        self.forces0: np.ndarray | None = None  # [3n] eV/Å, forces of the previous call

    def action(self, obs: Observation) -> np.ndarray:
        """The BFGS displacement from ``obs`` ([n_atoms, 3] Å), updating the Hessian history.

        Call it once per environment step with the observation that step produced: the
        Hessian update uses the change since the previous call (as BFGS does between
        iterations), so calling it twice on the same state only repeats the step.
        """
        pos = np.asarray(obs.positions, dtype=np.float64).ravel()  # [3n] Å
        forces = np.asarray(obs.forces, dtype=np.float64).ravel()  # [3n] eV/Å
        gradient = -forces
        if self.hessian is None or self.hessian.shape[0] != pos.shape[0]:
            self.hessian = np.eye(pos.shape[0]) * self.alpha
        else:
            self._update(pos, gradient, self.pos0, -self.forces0)
        self.pos0 = pos
        self.forces0 = forces.copy()

        omega, vectors = np.linalg.eigh(self.hessian)
        dpos = -vectors @ (gradient @ vectors / np.fabs(omega))  # [3n] Å
        longest = float(np.linalg.norm(dpos.reshape(-1, 3), axis=1).max())
        if longest >= self.maxstep:
            dpos *= self.maxstep / longest
        return dpos.reshape(-1, 3)

    def _update(self, pos: np.ndarray, gradient: np.ndarray, pos0: np.ndarray, gradient0: np.ndarray) -> None:
        """BFGS Hessian update from the step pos0 → pos (skipped when the positions did not change)."""
        dpos = pos - pos0
        if np.abs(dpos).max() < 1e-7:
            return
        dgradient = gradient - gradient0
        a = dpos @ dgradient
        dg = self.hessian @ dpos
        b = dpos @ dg
        self.hessian += np.outer(dgradient, dgradient) / a - np.outer(dg, dg) / b


def fake_step_probability(t_total: int, cfg: ExpertConfig) -> float:
    """Probability that an expert actor's step is a fake (BFGS) step at ``t_total`` (nfake).

    Moves from ``p_start`` at t_total = 0 to ``p_end`` at ``decay_steps`` and stays there,
    along the ``expert.schedule`` shape of :mod:`common.schedules`.
    """
    return SCHEDULES[cfg.schedule](cfg.p_start, cfg.p_end, cfg.decay_steps, max(t_total, 0))
