"""The teachers — what an expert actor's fake step is — their registry by name, and the nfake schedule.

Every teacher has the shape of :class:`Teacher`: ``reset()`` at each new episode, ``offers(obs)``
(whether it takes a fake step from this observation), ``action(obs)`` (the fake step, [n_atoms, 3] Å,
bounded by ``maxstep``) and ``force_calls`` (the force calls it spent beyond the environment's, for
training only; the expert actors report their sum as ``actors/teacher_force_calls``). They are
registered by ``expert.teacher`` name in :data:`TEACHERS` (:func:`register_teacher`), and
:func:`make_teacher` builds the one a config names. A new teacher is one class with a
``from_config(cfg, env, maxstep, network=None)`` constructor, registered under a name listed in
:data:`common.names.TEACHER_NAMES`.

:class:`BFGSExpert` keeps the same state as ``ase.optimize.BFGS`` (Hessian, previous
positions and forces) and returns the displacement BFGS would apply from the observed
state: the Hessian update from the previous step, the eigen-decomposition step
``dx = V (Vᵀ f / |ω|)``, and the uniform rescaling that makes the longest atom move
``maxstep`` Å (the actors pass ``env.max_step``). It never jumps to the minimum. Followed
alone through :class:`RelaxEnv` (``maxstep ≤ env.max_step`` and no collision correction), it reproduces
``ase.optimize.BFGS`` step for step — ``tests/test_expert.py`` checks this.

:class:`NewtonTeacher` (``expert.teacher = 'newton'``) is a better teacher for the expert
table, for training only: at every step it takes the Hessian of the environment's current
structure by central differences of the forces (6 force calls per free atom, on a calculator
of its own, so the environment's force count is untouched) and returns the saddle-free
Newton step ``dx = V (Vᵀ f / max(|λ|, λ_min))`` over the free coordinates (Dauphin et al.
2014: negative curvature is followed downhill, not uphill), scaled like BFGS's so the
longest atom move is at most ``maxstep``. With the exact Hessian such steps relax in far fewer
force calls than BFGS's (docs/RESULTS.md has the measurements), so imitating them lifts the
ceiling that imitating BFGS sets. Structures above ``expert.teacher_max_atoms`` get no fake step
(:meth:`NewtonTeacher.offers` is False; the expert actor's policy acts and the transition goes to
the online table): BFGS steps in their place would teach the policy BFGS's short steps on the
larger cells (docs/RESULTS.md says what that cost).

:class:`ExactComplianceTeacher` (``'compliance'``) and :class:`ModelHessianTeacher`
(``'model-hessian'``) take the same finite-difference Hessian and return the move their actor head
would make with that curvature (the exact per-atom compliance; a model Hessian fitted to it), so
their steps are ones the policy can learn to make.

:class:`LineSearchTeacher` (``expert.teacher = 'bfgsls'``) takes one ``ase.optimize.BFGSLineSearch``
iteration from the environment's current structure on a copy with a calculator of its own: the
line search's trial points are the teacher's force calls, never the environment's, and the fake
step is the accepted point minus the current one. Of ASE's optimizers BFGSLineSearch is the one
whose minima are lowest most often on the generalisation suite, so its steps teach where a
relaxation should go as well as how far.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from ase.optimize import BFGSLineSearch
from ase.optimize.bfgs import BFGSMethod

from actors.calculators import make_calculator
from actors.hessian import finite_difference_hessian, free_coordinates, full_hessian
from common.config import EnvConfig, ExpertConfig, NetworkConfig
from common.errors import RelaxRLError
from common.names import TEACHER_NAMES
from common.observation import HISTORY_DIM, Observation
from common.schedules import SCHEDULES
from learner.graph import neighbor_list
from learner.quasi_newton import fit_model_hessian, model_hessian_step, quasi_newton_step

__all__ = ["BFGSExpert", "ExactComplianceTeacher", "ExpertError", "LineSearchTeacher", "ModelHessianTeacher", "NewtonTeacher", "TEACHERS",
           "Teacher", "exact_compliance", "fake_step_probability", "finite_difference_hessian", "free_coordinates", "head_edges",
           "make_teacher", "register_teacher", "saddle_free_newton_step"]


class ExpertError(RelaxRLError, ValueError):
    """An invalid expert setting."""


@runtime_checkable
class Teacher(Protocol):
    """What an expert actor asks of a teacher, one per environment (module docstring)."""

    force_calls: int
    """Force calls the teacher made on calculators of its own (Hessians, line-search trial points), never counted
    as the environment's: the training-only cost of its fake steps. 0 for a teacher that needs none."""

    def reset(self) -> None:
        """A new episode (a new structure) starts: forget what the teacher remembers of the last one."""

    def offers(self, obs: Observation) -> bool:
        """Whether the teacher takes a fake step from ``obs``; where it does not, the expert actor's policy acts."""

    def action(self, obs: Observation) -> np.ndarray:
        """The fake step from ``obs`` (the environment's current state), [n_rows, 3]: one per atom (Å), and with
        ``env.relax_cell`` the 3 cell rows after them; only where :meth:`offers`."""


TEACHERS: dict[str, type] = {}
"""The teacher class of each ``expert.teacher`` name (filled by :func:`register_teacher`; the names are
:data:`common.names.TEACHER_NAMES`). Each class builds its teacher for an environment ``env`` (a
:class:`~actors.env.RelaxEnv`) with ``from_config(cfg: ExpertConfig, env, maxstep: float, network: NetworkConfig | None)``
(``network``: the run's network, whose neighbour graph a teacher on the head's graph uses)."""


def register_teacher(name: str) -> Callable[[type], type]:
    """Class decorator: register a teacher class (with a ``from_config`` classmethod) under ``name``."""
    if name not in TEACHER_NAMES:
        raise ExpertError(f"teacher name {name!r} is not in common.names.TEACHER_NAMES {TEACHER_NAMES}; add it there "
                          "so that the config accepts it")

    def register(cls):
        if name in TEACHERS:
            raise ExpertError(f"teacher name {name!r} is registered twice ({TEACHERS[name].__name__} and {cls.__name__})")
        TEACHERS[name] = cls
        return cls

    return register


@register_teacher("bfgs")
class BFGSExpert:
    """One BFGS iteration per :meth:`action`; :meth:`reset` at each new episode (``expert.teacher = 'bfgs'``)."""

    force_calls = 0
    """BFGS steps from the forces the environment already computed: no force calls of its own."""

    @classmethod
    def from_config(cls, cfg: ExpertConfig, env, maxstep: float, network: NetworkConfig | None = None) -> BFGSExpert:
        """With ``env.relax_cell`` BFGS moves the environment's cell-filter rows (:meth:`RelaxEnv.coordinates`)."""
        return cls(maxstep=maxstep, coordinates=env.coordinates if env.cfg.relax_cell else None)

    def __init__(self, maxstep: float = 0.2, alpha: float = 70.0, coordinates: Callable[[], np.ndarray] | None = None):
        if not maxstep > 0:
            raise ExpertError(f"BFGSExpert maxstep must be > 0 Å, got {maxstep}")
        self.maxstep = float(maxstep)
        """Largest row move of one step, Å."""
        self.alpha = float(alpha)
        """Initial Hessian guess alpha·I, eV/Å²."""
        self.coordinates = coordinates
        """The generalised coordinates of the observed state, [n_rows, 3] (a cell filter's rows, as ASE's BFGS on
        the filter moves them); None: the observation's positions."""
        self.reset()

    def offers(self, obs: Observation) -> bool:
        """Whether this expert takes a fake step from ``obs`` (BFGS always does)."""
        return True

    def reset(self) -> None:
        """Forget the Hessian history (a new structure)."""
        self.method: BFGSMethod | None = None  # ASE's BFGS maths: the Hessian, its update and the step
        self.pos0: np.ndarray | None = None  # [3n] Å, positions of the previous call
        self.forces0: np.ndarray | None = None  # [3n] eV/Å, forces of the previous call

    def action(self, obs: Observation) -> np.ndarray:
        """The BFGS displacement from ``obs`` ([n_rows, 3]: the atoms' Å, then a cell filter's 3 rows when the cell
        relaxes), updating the Hessian history.

        Call it once per environment step with the observation that step produced: the
        Hessian update uses the change since the previous call (as BFGS does between
        iterations), so calling it twice on the same state only repeats the step.
        """
        x = obs.positions if self.coordinates is None else self.coordinates()
        pos = np.asarray(x, dtype=np.float64).ravel()  # [3 n_rows] Å
        forces = np.asarray(obs.row_forces(), dtype=np.float64).ravel()  # [3 n_rows] eV/Å
        gradient = -forces
        if self.method is None or self.method.hessian.shape[0] != pos.shape[0]:
            self.method = BFGSMethod(np.eye(pos.shape[0]) * self.alpha)
        else:  # skipped by ASE when the positions did not change
            self.method.update(pos, gradient, self.pos0, -self.forces0)
        self.pos0 = pos
        self.forces0 = forces.copy()
        return _bounded(self.method.compute_step(gradient), self.maxstep)  # [3n] Å → [n, 3]

    @property
    def hessian(self) -> np.ndarray | None:
        """The current BFGS Hessian, [3n, 3n] eV/Å² (None before the first step of an episode)."""
        return None if self.method is None else self.method.hessian


def _bounded(dpos: np.ndarray, maxstep: float) -> np.ndarray:
    """[3n] → [n, 3], scaled as a whole so that the longest atom move is at most ``maxstep`` (BFGS's rule)."""
    steps = dpos.reshape(-1, 3)
    longest = float(np.linalg.norm(steps, axis=1).max()) if len(steps) else 0.0
    return steps * (maxstep / longest) if longest > maxstep else steps


def saddle_free_newton_step(hessian: np.ndarray, forces: np.ndarray, free: np.ndarray, maxstep: float,
                            min_curvature: float) -> np.ndarray:
    """``V (Vᵀ f / max(|λ|, min_curvature))`` on the free coordinates (zero elsewhere), bounded like BFGS. [n, 3] Å"""
    omega, vectors = np.linalg.eigh(hessian)
    f = np.asarray(forces, dtype=np.float64).ravel()
    dpos = np.zeros_like(f)
    dpos[free] = vectors @ ((vectors.T @ f[free]) / np.maximum(np.abs(omega), min_curvature))
    return _bounded(dpos, maxstep)


@register_teacher("newton")
class NewtonTeacher:
    """A saddle-free Newton step on the finite-difference Hessian of an environment's structure (module docstring).

    ``env`` is the :class:`~actors.env.RelaxEnv` whose observations :meth:`action` is given; its
    current structure (with constraints) is read from ``env.atoms``.
    """

    @classmethod
    def from_config(cls, cfg: ExpertConfig, env, maxstep: float, network: NetworkConfig | None = None) -> NewtonTeacher:
        return cls(env, maxstep, cfg.teacher_min_curvature, cfg.teacher_max_atoms, network=network)

    def __init__(self, env, maxstep: float, min_curvature: float = 0.5, max_atoms: int = 24,
                 env_config: EnvConfig | None = None, network: NetworkConfig | None = None):
        if not maxstep > 0:
            raise ExpertError(f"NewtonTeacher maxstep must be > 0 Å, got {maxstep}")
        self.env, self.maxstep, self.min_curvature, self.max_atoms = env, float(maxstep), float(min_curvature), int(max_atoms)
        self.network = network or NetworkConfig()
        """The run's network: the neighbour graph (radius, max_neighbors) of a teacher on the head's graph."""
        cfg = env_config or env.cfg
        self.calculator = make_calculator(cfg.calculator, cfg.calculator_kwargs)
        self.force_calls = 0
        """Force calls the teacher made for its Hessians (not counted by the environment)."""
        self.reset()

    def reset(self) -> None:
        self._free: np.ndarray | None = None  # free coordinates of this episode's structure
        self.last_hessian: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        """(positions [n, 3] Å, Hessian over the free coordinates, free [3n]) of the teacher's newest step: the
        curvature probes reuse it at the same state instead of measuring again."""

    def offers(self, obs: Observation) -> bool:
        """True for structures of at most ``max_atoms`` atoms (the Hessian's cost grows as n²)."""
        return obs.n_atoms <= self.max_atoms

    def action(self, obs: Observation) -> np.ndarray:
        """The teacher's displacement from ``obs`` (the env's current state), [n_atoms, 3] Å."""
        if not self.offers(obs):
            raise ExpertError(f"the {type(self).__name__} takes no step on {obs.n_atoms} atoms (more than "
                              f"expert.teacher_max_atoms = {self.max_atoms}); ask offers(obs) first")
        atoms = self.env.atoms
        if self._free is None or self._free.size != 3 * len(atoms):
            self._free = free_coordinates(atoms)
        if not self._free.any():
            return np.zeros((obs.n_atoms, 3))
        self.calculator.reset()
        hessian = finite_difference_hessian(atoms, self.calculator, self._free)
        self.force_calls += 2 * int(self._free.sum())
        self.last_hessian = (atoms.get_positions(), hessian, self._free)
        return self.step(hessian, obs)

    def step(self, hessian: np.ndarray, obs: Observation) -> np.ndarray:
        """The move for the Hessian over the free coordinates at ``obs``: saddle-free Newton."""
        return saddle_free_newton_step(hessian, obs.forces, self._free, self.maxstep, self.min_curvature)


def exact_compliance(hessian: np.ndarray, free: np.ndarray, min_curvature: float) -> np.ndarray:
    """Per-atom compliance ``|H_ii|⁻¹`` (eigenvalues floored at ``min_curvature``) from the Hessian over the
    ``free`` coordinates; a fixed coordinate gets 1/min_curvature (it has no force and never moves). [n, 3, 3] Å²/eV"""
    full = full_hessian(hessian, free)
    full[~free, ~free] = min_curvature
    n = free.size // 3
    out = np.empty((n, 3, 3))
    for i in range(n):
        w, v = np.linalg.eigh(full[3 * i:3 * i + 3, 3 * i:3 * i + 3])
        out[i] = (v / np.maximum(np.abs(w), min_curvature)) @ v.T
    return out


@register_teacher("compliance")
class ExactComplianceTeacher(NewtonTeacher):
    """``expert.teacher = 'compliance'``: the quasi-Newton head's own move
    (:func:`learner.quasi_newton.quasi_newton_step`, the same L-BFGS memory of the observation's path
    history) with the exact per-atom compliance |H_ii|⁻¹ of the finite-difference Hessian in place
    of the learned one. Its steps are ones the quasi-Newton head can make, so imitating them
    teaches the network the atoms' stiffness; a saddle-free Newton step is not of that form
    (the L-BFGS head cannot represent a dense inverse Hessian; docs/RESULTS.md measures cloning it)."""

    def step(self, hessian: np.ndarray, obs: Observation) -> np.ndarray:
        compliance = torch.as_tensor(exact_compliance(hessian, self._free, self.min_curvature))  # [n, 3, 3] Å²/eV
        history = obs.history if obs.history is not None else np.zeros((obs.n_atoms, HISTORY_DIM))
        d = quasi_newton_step(torch.as_tensor(obs.forces, dtype=torch.float64), torch.as_tensor(history, dtype=torch.float64),
                              compliance, torch.zeros(obs.n_atoms, dtype=torch.int64), 1, self.maxstep).numpy()
        d[~self._free.reshape(-1, 3)] = 0.0
        return d


def head_edges(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, network: NetworkConfig,
               edge_index: np.ndarray | None = None, edge_shift: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(edge_index [2, E] int64 (sender, receiver), edge vectors [E, 3] Å, receiver to sender) of a structure: the
    given edges (an observation's), else the graph the run's head builds (learner.graph: network.radius,
    network.max_neighbors)."""
    if edge_index is not None:
        ei = np.asarray(edge_index, dtype=np.int64)
        shift = np.asarray(edge_shift, dtype=np.float64)
    else:
        ei, shift = neighbor_list(positions, cell, pbc, network.radius, network.max_neighbors)
    return ei, positions[ei[0]] + shift @ np.asarray(cell, dtype=np.float64) - positions[ei[1]]


@register_teacher("model-hessian")
class ModelHessianTeacher(NewtonTeacher):
    """``expert.teacher = 'model-hessian'``: the 'model-hessian' head's own move
    (:func:`learner.quasi_newton.model_hessian_step`, the same L-BFGS memory of the observation's path
    history) on the model Hessian fitted to the finite-difference Hessian
    (:func:`learner.quasi_newton.fit_model_hessian`: per-edge blocks along and across each bond of the
    observation's neighbour graph, per-atom diagonal at least ``min_curvature``). It is what that head does
    with a perfect network, so its steps are ones the head can make, and behaviour cloning and the
    curvature loss point the same way."""

    CG_ITERATIONS = 200
    """Conjugate-gradient iterations of the teacher's solve (it runs to the 1e-6 tolerance; no gradient)."""

    def edges(self, obs: Observation) -> tuple[np.ndarray, np.ndarray]:
        """The head's neighbour graph of ``obs`` (:func:`head_edges`): its own edges where it carries them."""
        return head_edges(obs.positions, obs.cell, obs.pbc, self.network, obs.edge_index, obs.edge_shift)

    def step(self, hessian: np.ndarray, obs: Observation) -> np.ndarray:
        n = obs.n_atoms
        full = full_hessian(hessian, self._free)
        ei, vectors = self.edges(obs)
        mask = self._free.reshape(-1, 3)
        model = fit_model_hessian(torch.as_tensor(full), torch.as_tensor(ei), torch.as_tensor(vectors),
                                  None if mask.all() else torch.as_tensor(mask, dtype=torch.float64), self.min_curvature)
        history = obs.history if obs.history is not None else np.zeros((n, HISTORY_DIM))
        d = model_hessian_step(torch.as_tensor(obs.forces, dtype=torch.float64), torch.as_tensor(history, dtype=torch.float64),
                               model, torch.zeros(n, dtype=torch.int64), 1, self.maxstep, self.CG_ITERATIONS).numpy()
        d[~mask] = 0.0
        return d


@register_teacher("bfgsls")
class LineSearchTeacher:
    """``expert.teacher = 'bfgsls'``: one ``ase.optimize.BFGSLineSearch`` iteration per :meth:`action`
    from the current structure of ``env`` (a :class:`~actors.env.RelaxEnv`), on a copy with a
    calculator of its own (module docstring). The optimizer's state (inverse Hessian, previous
    point and gradient, previous energy) lives for the episode; when the policy moved the
    structure between two fake steps, the next update spans those moves, as :class:`BFGSExpert`'s
    does. A failed line search restarts the state and returns BFGS's first step, F/70 bounded."""

    def __init__(self, env, maxstep: float, env_config: EnvConfig | None = None):
        if not maxstep > 0:
            raise ExpertError(f"LineSearchTeacher maxstep must be > 0 Å, got {maxstep}")
        self.env, self.maxstep = env, float(maxstep)
        cfg = env_config or env.cfg
        self.calculator = make_calculator(cfg.calculator, cfg.calculator_kwargs)
        self.force_calls = 0
        """Force calls the teacher made on its copy (the gradient and the line search's trial points)."""
        self.reset()

    @classmethod
    def from_config(cls, cfg: ExpertConfig, env, maxstep: float, network: NetworkConfig | None = None) -> LineSearchTeacher:
        return cls(env, maxstep)

    def reset(self) -> None:
        self._atoms = None  # the teacher's copy of this episode's structure
        self._opt: BFGSLineSearch | None = None

    def offers(self, obs: Observation) -> bool:
        """Whether this teacher takes a fake step from ``obs`` (it always does)."""
        return True

    def action(self, obs: Observation) -> np.ndarray:
        """The accepted point of one line-search BFGS iteration minus the current positions, [n_atoms, 3] Å."""
        atoms = self.env.atoms
        if self._opt is None or len(self._atoms) != len(atoms):
            self._atoms = atoms.copy()
            self._atoms.calc = self.calculator
            self._opt = BFGSLineSearch(self._atoms, logfile=None, maxstep=self.maxstep)
        else:
            self._atoms.set_positions(atoms.get_positions(), apply_constraint=False)
        start = self._atoms.get_positions()
        calls = self._opt.force_calls
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ASE prints 'skip update' on some steps
                self._opt.step()
        except RuntimeError:  # "LineSearch failed!": start over from this point
            self._opt.reset()
            self._atoms.set_positions(start, apply_constraint=False)
            return _bounded(np.asarray(obs.forces, dtype=np.float64).ravel() / 70.0, self.maxstep)
        finally:
            self.force_calls += 1 + self._opt.force_calls - calls
        return _bounded((self._atoms.get_positions() - start).ravel(), self.maxstep)


def make_teacher(cfg: ExpertConfig, env, maxstep: float, network: NetworkConfig | None = None) -> Teacher:
    """The teacher ``expert.teacher`` names (:data:`TEACHERS`) for the environment ``env``, bounded by ``maxstep`` Å,
    on the run's ``network`` graph (default: NetworkConfig()'s)."""
    return TEACHERS[cfg.teacher].from_config(cfg, env, maxstep, network)


def fake_step_probability(t_total: int, cfg: ExpertConfig) -> float:
    """Probability that an expert actor's step is a fake (teacher's) step at ``t_total`` (nfake).

    Moves from ``p_start`` at t_total = 0 to ``p_end`` at ``decay_steps`` and stays there,
    along the ``expert.schedule`` shape of :mod:`common.schedules`.
    """
    return SCHEDULES[cfg.schedule](cfg.p_start, cfg.p_end, cfg.decay_steps, max(t_total, 0))
