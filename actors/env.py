"""The relaxation environment: ASE atoms + a calculator, action correction, reward.

One episode relaxes one structure::

    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=200, calculator="emt"))
    obs = env.reset(atoms)              # ase.Atoms in (copied), Observation out
    step = env.step(displacement)       # [n_atoms, 3] Å
    step.obs, step.reward, step.terminated, step.truncated, step.info

Action correction (:func:`common.correction.correct_action`, a pure function that
``RLOptimizer`` and the learner reuse): per-atom cap at ``max_step``, then moves that would
bring a pair closer than ``min_distance_factor × (r_cov,i + r_cov,j)`` are scaled back;
``a_back`` is the fraction of the proposed move taken back (``info["a_back"]``). A non-finite
action is applied as no move with ``a_back = 1`` and ``info["error"]``.

Reward (all weights in :class:`EnvConfig`; F in eV/Å over per-atom force norms)::

    r = −w_fmax·Fmax − w_fmean·Fmean + w_delta·(Fmax_prev − Fmax)
        + w_log·(−log10 max(Fmax, 1e-6)) − w_back·a_back + w_energy·(E_prev − E)/n_atoms
        (+ converged_bonus if Fmax < fmax, unless the saddle check or the reference check below withholds it)

With ``env.saddle_check_atoms`` N > 0 (training only), a converged step on at most N free atoms also
gets the lowest eigenvalue of the finite-difference Hessian (:mod:`actors.hessian`, on a calculator
of its own; ``info["lowest_curvature"]``, ``info["saddle"]``). Fmax < fmax holds on saddle points
too; there the bonus is withheld, so the return tells a minimum from a saddle as the suite's
success does (a negative eigenvalue confirmed by the energy along its mode, 3 calls more). These force calls
are not the episode's (``info["saddle_check_force_calls"]``).

With ``env.reference_tolerance`` t > 0 (meV/atom, training only), a converged step whose energy per atom is more
than t above the structure's reference minimum earns no bonus either: the reference is what the structure brings in
``atoms.info["reference_energy_per_atom"]`` (eV/atom; the curriculum hands out the lowest minimum the run's actors
have reached on it, :class:`actors.curriculum.Curriculum`), so the bonus pays for the suite's success rule (reference
+ 1 meV/atom) rather than for any point where the forces vanish. A saddle lies above the minima it leads to, so once
a lower minimum is known this withholds the bonus on saddles too, at no force call. ``info["reference_gap"]`` (eV/atom)
and ``info["above_reference"]`` say what was found; a structure without a reference is paid as before.

``terminated`` on convergence; ``truncated`` at ``max_steps`` or when the calculator
returns non-finite forces/energy or raises (then ``info["error"]`` says why, the atoms are
put back where they were, and the observation is the last finite one).

ASE constraints of the structure (``FixAtoms``, selective dynamics, ...) hold throughout, as
in ASE's optimizers: forces are read with the constraints applied (a fixed atom has zero
force and does not count in Fmax), and every applied move goes through the constraints'
``adjust_positions`` after the correction above (so a fixed atom never moves; what a
constraint removes is not counted in ``a_back``, which measures the correction only).

With ``env.relax_cell`` the cell relaxes too, as ASE's optimizers on ``FrechetCellFilter(atoms)``
relax it (:mod:`actors.cell_filter`): the environment moves the filter's n + 3 generalised rows (the
atoms in the filter's starting frame, then 3 cell rows, exp_cell_factor·log of the deformation),
an action is [n_atoms + 3, 3], the forces are the filter's (the stress gives the cell rows'), and
Fmax, Fmean and the convergence test run over all rows (ASE's fmax on a filter). The observation
keeps the real positions and cell for the networks and carries the filter's atom-row forces in
``forces`` and its cell rows in ``cell_forces`` (histories alike). The action correction caps every
row at ``max_step`` and checks collisions on the atom rows in the filter's starting frame.

Each observation carries the path history (``Observation.history``: the last
``env.history_steps`` actual moves and the force changes they caused, newest first; zeros
after ``reset``), the information a quasi-Newton method keeps; ``RLOptimizer`` builds the same.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from actors.calculators import CalculatorError, make_calculator
from actors.cell_filter import AtomRows, FilterRows, check_cell_relaxable, coordinates
from actors.hessian import confirmed_curvature, free_coordinates, held_mask, is_saddle, small_enough
from actors.structure_check import StructureError, check_structure
from common.config import EnvConfig
from common.correction import ActionError, PairList, correct_action
from common.errors import RelaxRLError
from common.observation import Observation, empty_history, env_features, history_after

__all__ = [
    "ActionError",
    "CalculatorError",
    "EnvConfig",
    "EpisodeError",
    "PairList",
    "REFERENCE_ENERGY",
    "RelaxEnv",
    "StepResult",
    "StructureError",
    "compute_reward",
    "correct_action",
    "force_stats",
    "make_calculator",
]


class EpisodeError(RelaxRLError, RuntimeError):
    """step() without an active episode (call reset(atoms) first)."""


# ----------------------------------------------------------------------------- calculator


# make_calculator lives in actors.calculators (built-in names, MLIPs, the per-process model cache).


# ----------------------------------------------------------------------------- reward

REFERENCE_ENERGY = "reference_energy_per_atom"
"""``atoms.info`` key of a structure's reference minimum, eV/atom (``env.reference_tolerance``)."""


def force_stats(forces: np.ndarray) -> tuple[float, float]:
    """(Fmax, Fmean) over per-row force norms (the atoms', and a cell filter's cell rows), eV/Å."""
    norms = np.sqrt(np.einsum("ij,ij->i", forces, forces))  # [n_rows] eV/Å
    return float(norms.max()), float(norms.mean())


def compute_reward(fmax: float, fmean: float, fmax_prev: float, a_back: float, cfg: EnvConfig,
                   energy_drop: float = 0.0, withheld: bool = False) -> float:
    """The step reward from the forces after the step (eV/Å), a_back, the energy drop per atom since the
    previous step (eV/atom) and whether a converged step's bonus is withheld (on a saddle point, or above the
    reference minimum: module docstring)."""
    r = (
        -cfg.w_fmax * fmax
        - cfg.w_fmean * fmean
        + cfg.w_delta * (fmax_prev - fmax)
        + cfg.w_log * (-math.log10(max(fmax, 1e-6)))
        - cfg.w_back * a_back
        + cfg.w_energy * energy_drop
    )
    if fmax < cfg.fmax and not withheld:
        r += cfg.converged_bonus
    return float(r)


# ----------------------------------------------------------------------------- environment


@dataclass(slots=True)
class StepResult:
    """What :meth:`RelaxEnv.step` returns; iterable as (obs, reward, terminated, truncated, info)."""

    obs: Observation
    reward: float
    terminated: bool
    truncated: bool
    info: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.obs, self.reward, self.terminated, self.truncated, self.info))


class RelaxEnv:
    """One structure relaxed by displacements; see the module docstring for the rules."""

    def __init__(self, cfg: EnvConfig | None = None, calculator: Calculator | None = None):
        """``calculator`` (an ASE calculator instance) overrides ``cfg.calculator`` when given."""
        self.cfg = cfg or EnvConfig()
        self.cfg.check()  # the config's own range check (common/config.py), for configs built around it
        if calculator is not None:
            self.calc = calculator
            self._calc_name = type(calculator).__name__
        else:
            self.calc = make_calculator(self.cfg.calculator, self.cfg.calculator_kwargs)
            self._calc_name = self.cfg.calculator
        self._own_calc = calculator is None
        self._check_calc: Calculator | None = None  # the saddle check's own calculator, made when first needed
        self._reference: float | None = None  # the episode's reference minimum, eV/atom (env.reference_tolerance)
        self._free: np.ndarray | None = None  # [3n] free coordinates of the episode, found when first needed
        self._atoms: Atoms | None = None
        self._rows: AtomRows | FilterRows | None = None  # the coordinates the episode moves
        self._done = True
        self.name = ""
        self.steps = 0
        self.force_calls = 0

    # -- episode state -------------------------------------------------------------------

    @property
    def atoms(self) -> Atoms:
        """A copy of the current structure (without calculator)."""
        if self._atoms is None:
            raise EpisodeError("no structure yet: call reset(atoms) first")
        a = self._atoms.copy()
        a.calc = None
        return a

    def reset(self, atoms: Atoms) -> Observation:
        """Start an episode on a copy of ``atoms``; computes the initial forces (1 force call)."""
        name = str(atoms.info.get("name", atoms.get_chemical_formula()))
        check_structure(atoms, name, calculator=self._calc_name,
                        min_distance_factor=self.cfg.min_distance_factor)
        a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        if atoms.constraints:
            a.set_constraint(copy.deepcopy(atoms.constraints))
        a.info["name"] = name
        if self.cfg.relax_cell:
            check_cell_relaxable(a, self.calc, name)
        self.calc.reset()
        a.calc = self.calc
        self.name = name
        ref = atoms.info.get(REFERENCE_ENERGY)
        self._reference = float(ref) if ref is not None else None  # eV/atom, env.reference_tolerance
        self.steps = 0
        self.force_calls = 1  # the initial evaluation below
        self._last_a_back = 0.0
        self._atoms = a
        self._free = None
        self._free_mask = held_mask(a)
        self._numbers = a.numbers.astype(np.int64)  # shared by every observation of the episode
        self._pbc = np.array(a.pbc, dtype=bool)
        self._rows = coordinates(a, self.cfg.relax_cell)
        self._x = self._rows.get()  # [n_rows, 3]: atom rows (Å), then the cell rows of a filter
        self._pos, self._cell = self._rows.frame(self._x)  # the atom rows and the cell they are positions in
        try:
            forces, energy = self._evaluate()
        except Exception as e:
            self._done = True
            raise CalculatorError(
                f"structure {name!r}: calculator {self._calc_name!r} failed on the initial structure "
                f"({type(e).__name__}: {e}); check the structure and env.calculator_kwargs"
            ) from None
        if not (np.isfinite(forces).all() and math.isfinite(energy)):
            self._done = True
            raise CalculatorError(
                f"structure {name!r}: calculator {self._calc_name!r} returned non-finite forces or energy "
                "for the initial structure; check the structure (overlapping atoms?) and the calculator"
            )
        self._pairs = self._build_pairs(self._pos)
        self._history = empty_history(len(self._x), self.cfg.history_steps)  # [n_rows, 6 K] Å, eV/Å
        self._forces, self._energy = forces, energy
        self._fmax, self._fmean = force_stats(forces)
        self._done = False
        return self._observe()

    def step(self, displacement: np.ndarray) -> StepResult:
        """Apply one corrected displacement ([n_atoms, 3] Å; [n_atoms + 3, 3] rows with ``env.relax_cell``); see the
        module docstring."""
        if self._done:
            raise EpisodeError("the episode has ended (or never started): call reset(atoms) before step()")
        cfg = self.cfg
        info: dict[str, Any] = {}
        actual, a_back = self._corrected(displacement, info)
        fmax_prev, energy_prev = self._fmax, self._energy
        self.steps += 1
        actual, failed = self._move(actual, info)
        self._last_a_back = a_back
        converged = (not failed) and self._fmax < cfg.fmax
        energy_drop = (energy_prev - self._energy) / len(self._numbers)  # eV/atom; 0 when nothing moved
        saddle = converged and self._saddle_check(info)
        energy_per_atom = self._energy / len(self._numbers)  # eV/atom
        above = converged and self._above_reference(energy_per_atom, info)
        reward = compute_reward(self._fmax, self._fmean, fmax_prev, a_back, cfg, energy_drop, saddle or above)
        terminated = converged
        truncated = (not terminated) and (failed or self.steps >= cfg.max_steps)
        self._done = terminated or truncated

        norms = np.sqrt(np.einsum("ij,ij->i", actual, actual))  # [n_rows]
        info.update(
            actual_move=actual,
            actual_move_norm=float(norms.mean()),
            a_back=a_back,
            fmax=self._fmax,
            fmean=self._fmean,
            energy=self._energy,
            energy_per_atom=energy_per_atom,
            converged=converged,
            force_calls=self.force_calls,
            steps=self.steps,
        )
        return StepResult(self._observe(), reward, terminated, truncated, info)

    # -- internals -----------------------------------------------------------------------

    def _corrected(self, displacement: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, float]:
        """The environment's correction of a proposed displacement: (actual [n_rows, 3] Å, a_back). A non-finite
        proposal is applied as no move with a_back = 1 (said in ``info["error"]``); a wrong shape is an ActionError."""
        cfg = self.cfg
        proposed = np.asarray(displacement, dtype=np.float64)
        if proposed.shape != self._x.shape:
            what = "(n_atoms + 3 cell rows, 3) with env.relax_cell" if cfg.relax_cell else "(n_atoms, 3) in Å"
            raise ActionError(f"displacement has shape {proposed.shape}, expected {self._x.shape} {what}")
        if not np.isfinite(proposed).all():
            info["error"] = "non-finite action (NaN or inf): applied as no move with a_back = 1"
            return np.zeros_like(self._x), 1.0
        if not self._pairs.valid_for(self._pos):
            self._pairs = self._build_pairs(self._pos)
        return correct_action(self, proposed, cfg, pairs=self._pairs, cell_rows=cfg.relax_cell)

    def _move(self, actual: np.ndarray, info: dict[str, Any]) -> tuple[np.ndarray, bool]:
        """Make the corrected move: through the ASE constraints, then one force call if anything moved. Returns
        the move made [n_rows, 3] and whether the calculator failed (raised, or non-finite forces or energy: the
        state is put back, the move is zeros, ``info["error"]`` says why). The path history gets the move, or a
        step of zeros when nothing moved (a quasi-Newton pair with s = 0 carries no curvature)."""
        failed = False
        if actual.any():
            old_x = self._x
            new_x = self._rows.set(old_x + actual)  # through the ASE constraints: what a constraint removes is not a_back
            actual = new_x - old_x
        if actual.any():
            self.force_calls += 1
            try:
                forces, energy = self._evaluate()
                failed = not (np.isfinite(forces).all() and math.isfinite(energy))
                if failed:
                    info["error"] = f"calculator {self._calc_name!r} returned non-finite forces or energy; episode truncated"
            except Exception as e:  # a calculator failure ends the episode, never the actor
                failed = True
                info["error"] = f"calculator {self._calc_name!r} raised {type(e).__name__}: {e}; episode truncated"
            if failed:
                self._rows.restore(old_x)
                actual = np.zeros_like(self._x)
            else:
                self._history = history_after(actual, self._forces, forces, self._history)
                self._x, self._forces, self._energy = new_x, forces, energy
                self._pos = self._rows.frame(new_x)[0]
                self._fmax, self._fmean = force_stats(forces)
        if not actual.any():
            z = np.zeros_like(self._x)
            self._history = history_after(z, z, z, self._history)
        return actual, failed

    def _saddle_check(self, info: dict[str, Any]) -> bool:
        """Whether the converged state is a saddle point (``env.saddle_check_atoms``; module docstring)."""
        if self.cfg.saddle_check_atoms <= 0:
            return False
        if self._free is None:
            self._free = free_coordinates(self._atoms)
        if not small_enough(self._free, self.cfg.saddle_check_atoms):
            return False
        curvature, calls = confirmed_curvature(self._atoms, self._check_calculator(), self._free, cell=self.cfg.relax_cell)
        info.update(lowest_curvature=curvature, saddle=is_saddle(curvature), saddle_check_force_calls=calls)
        return info["saddle"]

    def _above_reference(self, energy_per_atom: float, info: dict[str, Any]) -> bool:
        """Whether the converged state (``energy_per_atom``, eV/atom) is more than ``env.reference_tolerance`` above
        the structure's reference minimum (module docstring); False when off or when the structure brought no reference."""
        if self.cfg.reference_tolerance <= 0 or self._reference is None:
            return False
        gap = energy_per_atom - self._reference  # eV/atom
        info.update(reference_gap=gap, above_reference=gap > self.cfg.reference_tolerance * 1e-3)
        return info["above_reference"]

    def _check_calculator(self) -> Calculator:
        """The saddle check's own calculator (made once): the env's is never moved by the check."""
        if self._check_calc is None:
            self._check_calc = (make_calculator(self.cfg.calculator, self.cfg.calculator_kwargs)
                                if self._own_calc else copy.deepcopy(self.calc))
        return self._check_calc

    def coordinates(self) -> np.ndarray:
        """The generalised coordinates of the current state, [n_rows, 3]: the positions (Å), or with
        ``env.relax_cell`` the cell filter's rows (what a teacher's BFGS on the filter moves)."""
        if self._rows is None:
            raise EpisodeError("no structure yet: call reset(atoms) first")
        return self._x.copy()

    # correct_action reads these, so the env itself can be passed as the state: the atom rows and the cell they
    # are positions in (the current cell, or a cell filter's starting cell)
    @property
    def positions(self) -> np.ndarray:
        return self._pos

    @property
    def numbers(self) -> np.ndarray:
        return self._numbers

    @property
    def cell(self) -> np.ndarray:
        return self._cell

    @property
    def pbc(self) -> np.ndarray:
        return self._pbc

    def _evaluate(self) -> tuple[np.ndarray, float]:
        """Generalised forces of every row (eV/Å, constraints applied) and energy (eV) at the current state (one
        calculator call)."""
        forces = self._rows.forces()
        energy = float(self._atoms.get_potential_energy())
        return forces, energy

    def _build_pairs(self, positions: np.ndarray) -> PairList:
        return PairList(positions, self._numbers, self._cell, self._pbc,
                        self.cfg.max_step, self.cfg.min_distance_factor)

    def _env_features(self) -> np.ndarray:
        return env_features(self._fmax, self.steps / self.cfg.max_steps, self._last_a_back, self.cfg.env_input_dim)

    def _observe(self) -> Observation:
        n = len(self._numbers)
        cell = self.cfg.relax_cell
        return Observation(
            positions=np.array(self._atoms.positions, dtype=np.float64),
            numbers=self._numbers,
            cell=np.array(self._atoms.cell[:], dtype=np.float64) if cell else self._cell,
            pbc=self._pbc,
            forces=self._forces[:n].copy(),
            energy=self._energy,
            env_features=self._env_features(),
            history=self._history[:n].copy(),
            cell_forces=self._forces[n:].copy() if cell else None,
            cell_history=self._history[n:].copy() if cell else None,
            free=self._free_mask,
        )
