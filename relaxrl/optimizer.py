"""A trained relaxrl policy used as an ordinary ASE optimizer.

    from relaxrl.optimizer import RLOptimizer
    opt = RLOptimizer(atoms, checkpoint="runs/demo/checkpoints", logfile="-", trajectory="relax.traj")
    converged = opt.run(fmax=0.05, steps=200)
    print(opt.summary())

:class:`RLOptimizer` subclasses :class:`ase.optimize.Optimizer` and overrides only
``step()``: the policy proposes a displacement per atom (Å), the displacement is corrected
by the very function the training environment uses (``actors.env``: per-atom cap at
``max_step`` Å, then moves that bring pairs too close are scaled back), and the corrected
move is applied through the optimizable. ``run()``, ``irun()``, ``attach()``, logfile and
trajectory are ASE's own.

What it optimizes: the Cartesian positions of all atoms of an :class:`ase.Atoms` (ASE
constraints such as ``FixAtoms`` apply as usual, since moves go through ``set_positions``),
or atoms and cell together through a cell filter, as with ASE's optimizers::

    RLOptimizer(FrechetCellFilter(atoms), checkpoint=...).run(fmax=0.05)   # or UnitCellFilter(atoms)
    RLOptimizer(atoms, checkpoint=..., relax_cell=True).run(fmax=0.05)     # the same, FrechetCellFilter inside

On a filter the policy moves the filter's generalised rows (n atom rows and 3 cell rows;
``actors/cell_filter.py``), exactly as the training environment with ``env.relax_cell`` does,
and ``fmax`` is the filter's generalised force, as for ASE's optimizers on it. A checkpoint
trained without the cell moves the cell rows with its atoms' mean compliance (learner/heads.py).
``StrainFilter`` (no atom rows) and subset filters are refused with
:class:`UnsupportedOptimizableError`.

Hybrid mode (``hybrid_patience=k > 0``): when the largest force has not improved for ``k``
consecutive policy steps, the optimizer hands over to ASE's BFGS for the rest of the run
(fresh Hessian, same optimizable, same log, trajectory and observers). :meth:`summary`
says which part produced the result and how many steps and force calls each part took.

Safety guard: a policy that does not fit the structure (a checkpoint trained on other
elements, sizes or another calculator) can push atoms apart and raise the energy by tens of
eV while the forces of the scattered atoms look small. After every policy step the energy is
compared with the starting energy; when it rose by more than ``max_energy_rise`` (default
:func:`energy_rise_limit`: max(1 eV, 0.5 eV/atom), far above what any descent step does
and far below what breaking the structure costs) or is not finite, the atoms are put back
at their starting positions and

* without hybrid mode, :class:`PolicyDivergedError` is raised (`relaxrl relax` then writes
  nothing; `relaxrl eval` records the run as failed);
* in hybrid mode, BFGS takes over at once from the starting geometry (``summary()`` reports
  ``guard_tripped``), so the caller still gets a correct relaxation.

Force calls: the optimizer counts the geometries at which energy or forces were requested
through its optimizable (cached repeats at the same geometry are not counted), which is the
number of real calculator calls for calculators that compute energy and forces together.
:class:`CountingCalculator` counts at the calculator instead, for any optimizer.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS
from ase.optimize.optimize import DEFAULT_MAX_STEPS, Optimizer
from ase.utils.abc import Optimizable

from actors.cell_filter import CELL_FILTER_TYPES
from actors.env import correct_action
from actors.hessian import held_mask
from actors.structure_check import StructureError, check_structure, policy_overlap_advice
from common.errors import RelaxRLError
from common.observation import empty_history, history_after
from learner.policy import load_policy

__all__ = ["RLOptimizer", "CountingCalculator", "PolicyDivergedError", "UnsupportedOptimizableError",
           "DEFAULT_MAX_STEPS", "energy_rise_limit"]

ENERGY_RISE_LIMIT_EV = 1.0
"""Smallest energy rise above the start (eV) that stops the policy (see :func:`energy_rise_limit`)."""
ENERGY_RISE_LIMIT_EV_PER_ATOM = 0.5
"""Energy rise above the start per atom (eV/atom) that stops the policy on larger structures."""


def energy_rise_limit(n_atoms: int) -> float:
    """The default ``max_energy_rise`` (eV): max(1 eV, 0.5 eV/atom × n_atoms).

    A relaxation goes downhill; a policy step may overshoot by a fraction of an eV, never by
    0.5 eV per atom, which is a large part of a metal's cohesive energy (Cu: 3.5 eV/atom).
    """
    return max(ENERGY_RISE_LIMIT_EV, ENERGY_RISE_LIMIT_EV_PER_ATOM * n_atoms)


class UnsupportedOptimizableError(RelaxRLError, TypeError):
    """The object handed to RLOptimizer has degrees of freedom the policy cannot move (e.g. the cell)."""


class PolicyOutputError(RelaxRLError):
    """The policy returned a displacement of the wrong shape or with non-finite values."""


class PolicyDivergedError(RelaxRLError):
    """The policy raised the energy far above the start (the checkpoint does not fit this structure or calculator)."""


class CountingCalculator(Calculator):
    """Delegates to ``inner``, counts the calculations that really ran and times them.

    ASE's caching is kept: a property asked for again at the same geometry is served from
    ``results`` and is not counted. Every calculation asks the inner calculator for energy
    and forces together (when it implements both), and with ``stress=True`` for the stress too
    (a cell filter reads it at every geometry), so one geometry costs one call whatever
    order an optimizer asks for them in. ``seconds`` is the wall time spent in the inner
    calculator: an optimizer's own time is its wall time minus this.
    """

    def __init__(self, inner: Any, stress: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.implemented_properties = list(inner.implemented_properties)
        self.with_properties = ("energy", "forces") + (("stress",) if stress else ())
        self.calls = 0
        """Calculations run by the inner calculator (force calls), since construction or reset_count()."""
        self.seconds = 0.0
        """Wall time (s) of those calculations, since construction or reset_count()."""

    def reset_count(self) -> None:
        self.calls = 0
        self.seconds = 0.0

    def calculate(self, atoms: Atoms | None = None, properties: list[str] | None = None,
                  system_changes: list[str] = all_changes) -> None:
        t0 = time.perf_counter()
        properties = list(properties or ["energy"])
        for name in self.with_properties:
            if name in self.implemented_properties and name not in properties:
                properties.append(name)
        Calculator.calculate(self, atoms, properties, system_changes)
        self.calls += 1
        self.inner.results = {}
        try:
            for name in properties:
                self.inner.get_property(name, self.atoms)
            self.results = dict(self.inner.results)
        finally:
            self.seconds += time.perf_counter() - t0

    def __repr__(self) -> str:
        return f"CountingCalculator({self.inner!r}, calls={self.calls})"


class _CountingOptimizable(Optimizable):
    """Wraps an optimizable and counts distinct geometries at which value or gradient were asked for.

    A geometry is the atoms' positions and cell (``atoms``: the Atoms the optimizable moves), compared
    exactly; the coordinates and the gradient of the current geometry are kept, so asking again costs
    nothing (a cell filter computes a matrix logarithm and 9 Fréchet derivatives for each, and ASE's
    run loop asks for the gradient several times per step)."""

    def __init__(self, inner: Optimizable, atoms: Atoms) -> None:
        self.inner = inner
        self.atoms = atoms
        self.calls = 0
        self._key: np.ndarray | None = None  # positions and cell of the last geometry evaluated
        self._cache: dict[str, np.ndarray] = {}  # 'x', 'gradient' of the geometry ``_geometry()`` gives now

    def _geometry(self) -> np.ndarray:
        return np.concatenate([self.atoms.positions.ravel(), self.atoms.cell.array.ravel()])

    def _current(self) -> dict[str, np.ndarray]:
        """The cache of the present geometry (emptied when the geometry changed since it was filled)."""
        key = self._geometry()
        if self._cache.get("key") is None or not np.array_equal(self._cache["key"], key):
            self._cache = {"key": key}
        return self._cache

    def _touch(self) -> None:
        key = self._geometry()
        if self._key is None or key.shape != self._key.shape or not np.array_equal(key, self._key):
            self.calls += 1
            self._key = key

    def ndofs(self) -> int:
        return self.inner.ndofs()

    def get_x(self) -> np.ndarray:
        cache = self._current()
        if "x" not in cache:
            cache["x"] = self.inner.get_x()
        return cache["x"].copy()

    def set_x(self, x: np.ndarray) -> None:
        self.inner.set_x(x)

    def get_gradient(self) -> np.ndarray:
        self._touch()
        cache = self._current()
        if "gradient" not in cache:
            cache["gradient"] = self.inner.get_gradient()
        return cache["gradient"].copy()

    def get_value(self) -> float:
        self._touch()
        return self.inner.get_value()

    def iterimages(self):
        return self.inner.iterimages()

    def converged(self, gradient: np.ndarray, fmax: float) -> bool:
        return self.inner.converged(gradient, fmax)

    def gradient_norm(self, gradient: np.ndarray) -> float:
        return self.inner.gradient_norm(gradient)


def _check_supported(atoms: Any) -> tuple[Atoms, Any]:
    """(the Atoms the policy acts on, the cell filter or None), or raise when the optimizable's coordinates are
    neither their positions nor a cell filter's rows."""
    if isinstance(atoms, Atoms):
        return atoms, None
    inner = getattr(atoms, "atoms", None)
    if isinstance(atoms, CELL_FILTER_TYPES) and isinstance(inner, Atoms):
        return inner, atoms
    name = type(atoms).__name__
    if "Cell" in name or "Strain" in name:
        hint = ("the policy moves atoms, or atoms and cell through FrechetCellFilter(atoms) or UnitCellFilter(atoms) "
                "(or RLOptimizer(atoms, relax_cell=True)); a cell alone has no atom rows to move.")
    else:
        hint = ("it moves the Cartesian positions of all atoms of an ase.Atoms (ASE constraints such as FixAtoms apply), "
                "or atoms and cell through FrechetCellFilter(atoms).")
    where = f" of {len(inner)} atoms" if isinstance(inner, Atoms) else ""
    raise UnsupportedOptimizableError(f"RLOptimizer cannot optimize a {name}{where}: {hint}")


def _check_atoms(atoms: Atoms, min_distance_factor: float) -> None:
    """:func:`actors.structure_check.check_structure` on the atoms the policy moves, with their calculator (a
    :class:`CountingCalculator`'s inner one), the error saying it comes from RLOptimizer."""
    calc = atoms.calc.inner if isinstance(atoms.calc, CountingCalculator) else atoms.calc
    try:
        check_structure(atoms, calculator=calc, min_distance_factor=min_distance_factor,
                        calculator_option="atoms.calc", overlap_advice=policy_overlap_advice(min_distance_factor))
    except StructureError as e:
        raise StructureError(f"RLOptimizer: {e}") from None


class _FilterFrame:
    """The atom rows of a cell filter as the action correction's state: positions in the filter's starting cell."""

    def __init__(self, rows: np.ndarray, atoms: Atoms, cell: np.ndarray):
        self.positions, self.numbers, self.cell, self.pbc = rows, atoms.numbers, cell, atoms.pbc


class RLOptimizer(Optimizer):
    """Relax atomic positions with a trained relaxrl policy (optionally finishing with BFGS).

    Parameters
    ----------
    atoms:
        The :class:`ase.Atoms` to relax, with a calculator attached, or a ``FrechetCellFilter`` /
        ``UnitCellFilter`` of it to relax the cell too.
    checkpoint:
        Checkpoint file or run directory (its latest checkpoint); loaded with
        ``learner.policy.load_policy``. Give this or ``policy``.
    policy:
        An already loaded policy (``act(obs)``, ``observe(...)``, ``config``).
    logfile, trajectory, append_trajectory, restart:
        As for :class:`ase.optimize.BFGS` (``restart`` is accepted for symmetry and ignored:
        the policy has no state to restore beyond the step counter).
    hybrid_patience:
        Hand over to BFGS after this many consecutive policy steps without a new lowest
        Fmax (0 = never: the policy runs alone).
    hybrid_restore_best:
        At the hand-over, BFGS starts from the geometry with the lowest Fmax the policy
        reached (costs one force call when that is not the current geometry).
    bfgs_maxstep, bfgs_alpha:
        ``maxstep`` (Å) and ``alpha`` (eV/Å²) of the BFGS that takes over.
    max_energy_rise:
        Safety guard (see the module docstring): the largest energy rise above the starting
        energy (eV) a policy step may cause; None = :func:`energy_rise_limit` of the atom
        count, ``math.inf`` = no guard.
    device:
        Torch device the checkpoint is loaded on.
    relax_cell:
        Relax the cell too: the optimizer wraps ``atoms`` in ``FrechetCellFilter(atoms)`` itself (give plain
        atoms then, not a filter).
    check:
        Check the structure first, as `relaxrl relax` does (``actors.structure_check.check_structure`` with
        ``atoms.calc`` and the policy's ``env.min_distance_factor``): a (nearly) singular cell, non-finite or
        overlapping positions, elements the calculator does not handle and the rest raise
        :class:`~actors.structure_check.StructureError` (a ``ValueError``) naming the problem and the fix.
        False only where the caller has just checked it with the same rule (`relax` and `eval` do).
    """

    def __init__(
        self,
        atoms: Atoms,
        checkpoint: str | Path | None = None,
        policy: Any = None,
        restart: str | Path | None = None,
        logfile: IO | str | Path | None = "-",
        trajectory: str | Path | None = None,
        append_trajectory: bool = False,
        hybrid_patience: int = 0,
        hybrid_restore_best: bool = True,
        bfgs_maxstep: float = 0.2,
        bfgs_alpha: float = 70.0,
        device: str = "cpu",
        max_energy_rise: float | None = None,
        relax_cell: bool = False,
        check: bool = True,
        **kwargs: Any,
    ) -> None:
        if relax_cell:
            if not isinstance(atoms, Atoms):
                raise RelaxRLError(f"RLOptimizer(relax_cell=True) wraps plain atoms in FrechetCellFilter itself; got a "
                                   f"{type(atoms).__name__}: pass the atoms, or the filter without relax_cell")
            atoms = FrechetCellFilter(atoms)
        self._atoms_moved, self.cell_filter = _check_supported(atoms)
        if (checkpoint is None) == (policy is None):
            raise RelaxRLError("RLOptimizer needs exactly one of checkpoint=PATH or policy=POLICY")
        if policy is None:
            policy = load_policy(checkpoint, device=device)
        if check:
            _check_atoms(self._atoms_moved, policy.config.env.min_distance_factor)
        if hybrid_patience < 0:
            raise RelaxRLError(f"hybrid_patience must be >= 0 (0 = no hand-over), got {hybrid_patience}")
        if max_energy_rise is None:
            max_energy_rise = energy_rise_limit(len(self._atoms_moved))
        if not max_energy_rise > 0:  # also refuses NaN
            raise RelaxRLError(f"max_energy_rise must be > 0 eV (math.inf = no guard), got {max_energy_rise}")
        self.max_energy_rise = float(max_energy_rise)
        self._limit_text = (f"max({ENERGY_RISE_LIMIT_EV:g} eV, {ENERGY_RISE_LIMIT_EV_PER_ATOM:g} eV/atom × "
                            f"{len(self._atoms_moved)} atoms)" if max_energy_rise == energy_rise_limit(len(self._atoms_moved))
                            else "max_energy_rise")
        self.policy = policy
        self.env_config = policy.config.env
        self.hybrid_patience = int(hybrid_patience)
        self.hybrid_restore_best = bool(hybrid_restore_best)
        self.bfgs_maxstep = float(bfgs_maxstep)
        self.bfgs_alpha = float(bfgs_alpha)
        self.maxstep = float(self.env_config.max_step)
        super().__init__(atoms=atoms, restart=None, logfile=logfile, trajectory=trajectory,
                         append_trajectory=append_trajectory, **kwargs)
        self.optimizable = _CountingOptimizable(self.optimizable, self._atoms_moved)
        self._n_cell_rows = 3 if self.cell_filter is not None else 0
        if self.optimizable.ndofs() != 3 * (len(self._atoms_moved) + self._n_cell_rows):
            raise UnsupportedOptimizableError(
                f"RLOptimizer: optimizable has {self.optimizable.ndofs()} degrees of freedom, expected "
                f"3 × ({len(self._atoms_moved)} atoms + {self._n_cell_rows} cell rows)")

    # -- state -------------------------------------------------------------------------------

    def initialize(self) -> None:
        self.mode = "rl"
        """'rl' while the policy acts, 'bfgs' after a hybrid hand-over."""
        self.steps_rl = 0
        self.steps_bfgs = 0
        self.calls_at_handover: int | None = None
        self.restored_best = False
        self.handover_step: int | None = None
        self.last_a_back = 0.0
        self.a_back_history: list[float] = []
        self._best_fmax = np.inf
        self._best_x: np.ndarray | None = None
        self._since_best = 0
        self._bfgs: BFGS | None = None
        self._energy0: float | None = None
        self._x0: np.ndarray | None = None  # the starting coordinates, put back when the guard trips
        self.guard_tripped: dict[str, Any] | None = None
        """Set when the safety guard stopped the policy: step, energy rise (eV), limit (eV)."""
        self._prev_move: np.ndarray | None = None  # [n_rows, 3], the last applied move (atoms Å, then cell rows)
        self._prev_forces: np.ndarray | None = None  # [n_rows, 3] eV/Å, the (generalised) forces it was decided on
        self._history: np.ndarray | None = None  # [n_rows, 6 K], the history of the last observation
        self._free_mask = held_mask(self._atoms_moved)  # [n_atoms, 3] the constraints\' free coordinates, or None

    def todict(self) -> dict[str, Any]:
        d = super().todict()
        d.update(hybrid_patience=self.hybrid_patience, mode=self.mode)
        return d

    @property
    def force_calls(self) -> int:
        """Geometries at which energy or forces were computed through this optimizer (both parts)."""
        return self.optimizable.calls

    # -- one step ----------------------------------------------------------------------------

    def _observe(self) -> Any:
        """The observation the policy sees now, built as RelaxEnv builds it.

        Env features: log10 Fmax, step fraction = policy steps taken / ``env.max_steps`` of the
        training config (capped at 1), last a_back. Forces are the optimizable's (so atoms fixed
        by ASE constraints show zero force, as in the training env). The path history is the
        last ``env.history_steps`` applied moves and the force changes they caused, newest first
        (zeros before the first move), as ``RelaxEnv`` records it. On a cell filter all of it runs over the
        filter's rows: the observation gets the atom rows in ``forces``/``history`` and the cell rows in
        ``cell_forces``/``cell_history``. The coordinates ASE constraints hold (``free``) are marked as ``RelaxEnv`` marks them.
        """
        atoms = self._atoms_moved
        n = len(atoms)
        gradient = self.optimizable.get_gradient()  # [3 n_rows], eV/Å, cached after the first call
        forces = -gradient.reshape(-1, 3)  # [n_rows, 3] eV/Å
        energy = float(atoms.get_potential_energy())
        horizon = max(int(self.env_config.max_steps), 1)
        step_fraction = min(self.steps_rl / horizon, 1.0)
        cell = {"cell_forces": forces[n:]} if self._n_cell_rows else {}  # the cell rows, only for a filter
        obs = self.policy.observe(atoms, forces[:n], energy, step_fraction, self.last_a_back, **cell)
        if self._prev_move is None or self._prev_forces is None or self._history is None:
            history = empty_history(len(forces), self.env_config.history_steps)
        else:
            history = history_after(self._prev_move, self._prev_forces, forces, self._history)
        obs.history = history[:n]
        obs.cell_history = history[n:] if self._n_cell_rows else None
        obs.free = self._free_mask
        return obs

    def policy_move(self) -> tuple[np.ndarray, float]:
        """The corrected move (``[n_rows, 3]``: the atoms' Å, then a cell filter's 3 cell rows) the policy makes
        from the current state, and its a_back."""
        obs = self._observe()
        self._history, self._prev_forces = obs.row_history(), obs.row_forces()  # what the next observation builds on
        a_pred = np.asarray(self.policy.act(obs), dtype=np.float64)  # [n_rows, 3]
        n = len(self._atoms_moved)
        rows = n + self._n_cell_rows
        if a_pred.shape != (rows, 3) or not np.all(np.isfinite(a_pred)):
            raise PolicyOutputError(
                f"policy returned a displacement of shape {a_pred.shape} "
                f"{'with non-finite values ' if a_pred.size and not np.all(np.isfinite(a_pred)) else ''}"
                f"for {n} atoms; expected finite [{rows}, 3]. Check that the checkpoint matches this structure.")
        if self.cell_filter is None:
            actual, a_back = correct_action(self._atoms_moved, a_pred, self.env_config)
        else:  # the atom rows in the filter's starting cell, as the training environment corrects them
            x = self.optimizable.get_x().reshape(-1, 3)
            frame = _FilterFrame(x[:n], self._atoms_moved, np.asarray(self.cell_filter.orig_cell, dtype=np.float64))
            actual, a_back = correct_action(frame, a_pred, self.env_config, cell_rows=True)
        return np.asarray(actual, dtype=np.float64), float(a_back)

    def _remember_start(self) -> None:
        if self._energy0 is None:
            self._energy0 = float(self.optimizable.get_value())
            self._x0 = self.optimizable.get_x().copy()

    def step(self) -> None:  # type: ignore[override]
        self._remember_start()
        if self.mode == "bfgs":
            assert self._bfgs is not None
            self._bfgs.step()
            self.steps_bfgs += 1
            return
        move, a_back = self.policy_move()
        x = self.optimizable.get_x()
        self.optimizable.set_x(x + move.ravel())  # ASE constraints apply here
        self._prev_move = (self.optimizable.get_x() - x).reshape(-1, 3)
        self.last_a_back = a_back
        self.a_back_history.append(a_back)
        self.steps_rl += 1
        if self._guard():
            return
        if self.hybrid_patience:
            self._track_progress()

    def _guard(self) -> bool:
        """After a policy step: stop the policy when the energy rose above the limit (see the module docstring).

        Returns True when it tripped in hybrid mode (BFGS has taken over from the start);
        raises :class:`PolicyDivergedError` when it tripped without hybrid mode.
        """
        assert self._energy0 is not None and self._x0 is not None
        energy = float(self.optimizable.get_value())  # the new geometry; forces come with it
        rise = energy - self._energy0
        if np.isfinite(rise) and rise <= self.max_energy_rise:
            return False
        self.guard_tripped = {"step": self.steps_rl, "energy_rise": rise, "limit": self.max_energy_rise}
        self.optimizable.set_x(self._x0)  # never leave the caller's atoms wrecked
        if self.hybrid_patience:
            self.hand_over(restore_best=False)
            return True
        cfg = self.env_config
        raise PolicyDivergedError(
            f"the policy raised the energy of {self._atoms_moved.get_chemical_formula()} by {rise:.3g} eV in "
            f"{self.steps_rl} step(s) ({self._energy0:.4f} → {energy:.4f} eV), more than the {self.max_energy_rise:.3g} eV "
            f"allowed ({self._limit_text}): "
            f"the checkpoint does not fit this structure or calculator (it was trained with calculator "
            f"{cfg.calculator!r}). The atoms were put back at their starting positions. Use a checkpoint trained on "
            "such structures, or let BFGS take over (hybrid_patience=K; relaxrl relax/eval: --hybrid K)")

    def _track_progress(self) -> None:
        """After a policy step: count steps without a new lowest Fmax and hand over when patience runs out."""
        fmax = float(self.optimizable.gradient_norm(self.optimizable.get_gradient()))
        if fmax < self._best_fmax:
            self._best_fmax = fmax
            self._best_x = self.optimizable.get_x().copy()
            self._since_best = 0
        else:
            self._since_best += 1
        if self._since_best >= self.hybrid_patience:
            self.hand_over()

    def hand_over(self, restore_best: bool | None = None) -> None:
        """Switch to BFGS for the remaining steps (idempotent).

        ``restore_best``: start BFGS from the lowest-Fmax geometry the policy reached
        (default ``hybrid_restore_best``); False keeps the current geometry.
        """
        if self.mode == "bfgs":
            return
        if restore_best is None:
            restore_best = self.hybrid_restore_best
        if restore_best and self._best_x is not None:
            current = float(self.optimizable.gradient_norm(self.optimizable.get_gradient()))
            if current > self._best_fmax:
                self.optimizable.set_x(self._best_x)
                self.restored_best = True
        self._bfgs = BFGS(self.atoms, logfile=None, maxstep=self.bfgs_maxstep, alpha=self.bfgs_alpha)
        self._bfgs.optimizable = self.optimizable  # same counter, same coordinates
        self._bfgs.initialize()
        self.mode = "bfgs"
        self.handover_step = self.steps_rl  # policy steps taken before BFGS took over
        self.calls_at_handover = self.optimizable.calls

    def irun(self, fmax: float = 0.05, steps: int = DEFAULT_MAX_STEPS):  # type: ignore[override]
        self._remember_start()
        if self.hybrid_patience and self.nsteps == 0:
            self._best_fmax = float(self.optimizable.gradient_norm(self.optimizable.get_gradient()))
            self._best_x = self.optimizable.get_x().copy()
        return super().irun(fmax=fmax, steps=steps)

    def run(self, fmax: float = 0.05, steps: int = DEFAULT_MAX_STEPS) -> bool:  # type: ignore[override]
        converged = False
        for converged in self.irun(fmax=fmax, steps=steps):  # noqa: B007 - the last value is the result (ASE's run)
            pass
        return bool(converged)

    # -- results -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What happened so far, as plain JSON-able values.

        ``mode`` is 'rl' (policy only) or 'hybrid'; ``finished_by`` is the part that was acting
        when the run stopped ('rl' or 'bfgs'); ``steps_rl``/``steps_bfgs`` and
        ``force_calls_rl``/``force_calls_bfgs`` split the totals (the initial evaluation counts
        toward the RL part); ``guard_tripped`` is None, or the step, energy rise and limit (eV)
        at which the safety guard stopped the policy (hybrid mode: BFGS went on from the start).
        """
        gradient = self.optimizable.get_gradient()
        fmax_now = float(self.optimizable.gradient_norm(gradient))
        energy = float(self.optimizable.get_value())
        e0 = self._energy0 if self._energy0 is not None else energy
        calls = self.force_calls
        calls_rl = calls if self.calls_at_handover is None else self.calls_at_handover
        return {
            "optimizer": "RLOptimizer",
            "mode": "hybrid" if self.hybrid_patience else "rl",
            "finished_by": self.mode,
            "converged": bool(self.fmax is not None and fmax_now < self.fmax),
            "fmax_target": self.fmax,
            "fmax": fmax_now,
            "steps": int(self.nsteps),
            "steps_rl": int(self.steps_rl),
            "steps_bfgs": int(self.steps_bfgs),
            "handover_step": self.handover_step,
            "restored_best": self.restored_best,
            "force_calls": int(calls),
            "force_calls_rl": int(calls_rl),
            "force_calls_bfgs": int(calls - calls_rl),
            "energy_initial": e0,
            "energy_final": energy,
            "energy_change": energy - e0,
            "mean_a_back": float(np.mean(self.a_back_history)) if self.a_back_history else 0.0,
            "guard_tripped": self.guard_tripped,
        }
