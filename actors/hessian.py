"""Finite-difference Hessians on the coordinates ASE constraints leave free, and the saddle-point check.

    free = free_coordinates(atoms)                      # [3n] bool
    hessian_columns(atoms, EMT(), [0, 3])               # [2, n, 3, 3] eV/Å², columns of atoms 0 and 3 (12 calls)
    hessian = finite_difference_hessian(atoms, EMT(), free)   # [m, m] eV/Å², 2m force calls
    lowest_curvature(atoms, EMT())                      # eV/Å², rigid-body modes left out; a negative one confirmed
    curvature_if_small(atoms, EMT, max_atoms=24)        # the same, None above 24 free atoms
    lowest_curvature(atoms, EMT(), cell=True)           # over FrechetCellFilter's rows: atoms and cell
    is_saddle(curvature)                                # below −SADDLE_CURVATURE_EV_PER_A2

Training-time and evaluation tools only: the expert teachers (:mod:`actors.expert`), the environment's
saddle check (``env.saddle_check_atoms``) and ``relaxrl eval --curvature-check`` call these on their own
calculator, so the force calls they make are never counted as an optimizer's. ``RLOptimizer`` has none of this.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter

FD_DELTA = 1e-3
"""Displacement (Å) of the central differences of :func:`finite_difference_hessian`."""

SADDLE_CURVATURE_EV_PER_A2 = 0.05
"""A converged run whose lowest Hessian eigenvalue is below −this (eV/Å²) is flagged as ending on a saddle point:
well beyond the finite-difference noise of the near-zero translation and rotation modes of free clusters."""

CELL_COORDINATES = 9
"""The cell filter's generalised cell coordinates (three rows of three) after the atoms' in its position array."""

CONFIRM_STEP = 0.1
"""Amplitude (Å, or the cell filter's units) of the energy's second difference that confirms a negative eigenvalue
(:func:`mode_energy_curvature`). A machine-learned potential's surface can be rough on the scale of
:data:`FD_DELTA`: under CHGNet the finite-difference Hessian at an fmax-0.05 end of B2 NiAl has −0.79 eV/Å², while the
energy along that mode rises on both sides from ±0.03 on (+0.65 at ±0.1) and the same cell relaxed to fmax 0.005 has
no negative eigenvalue. A true saddle curves down over this range too (EMT bcc Cu's Bain mode, a square Cu4)."""


def free_coordinates(atoms: Atoms) -> np.ndarray:
    """Boolean mask [3n] of the Cartesian coordinates the atoms' ASE constraints let move.

    Found by moving each coordinate alone by 0.01 Å and letting every constraint adjust it:
    a coordinate that does not move (FixAtoms, a fixed direction of selective dynamics) is fixed."""
    pos = atoms.get_positions()
    free = np.ones(pos.size, dtype=bool)
    if not atoms.constraints:
        return free
    for k in range(pos.size):
        target = pos.copy()
        target.flat[k] += 0.01
        for c in atoms.constraints:
            c.adjust_positions(atoms, target)
        free[k] = abs(target.flat[k] - pos.flat[k]) > 1e-6
    return free


def held_mask(atoms: Atoms) -> np.ndarray | None:
    """The observation's ``free`` mask of ``atoms`` ([n, 3]: 1.0 free, 0.0 held by a constraint), None when its
    constraints hold no coordinate (or it has none)."""
    if not atoms.constraints:
        return None
    free = free_coordinates(atoms)
    return None if free.all() else free.reshape(-1, 3).astype(np.float64)


def _probe(atoms: Atoms, calculator: Any) -> Atoms:
    """A bare copy of ``atoms`` (numbers, positions, cell, pbc; no constraints) on ``calculator``: the finite
    differences move it, never the caller's atoms."""
    probe = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    probe.calc = calculator
    return probe


def _central_difference_hessian(x0: np.ndarray, place: Callable[[np.ndarray], None], gradient: Callable[[], np.ndarray],
                                idx: np.ndarray, delta: float) -> np.ndarray:
    """Hessian over the coordinates ``idx`` of the flat vector ``x0``: ``place(x)`` moves the probe to x, ``gradient()``
    is the flat gradient there; central differences, symmetrised, [len(idx), len(idx)] (2·len(idx) gradients)."""
    hessian = np.empty((len(idx), len(idx)))
    for col, k in enumerate(idx):
        grads = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x[k] += sign * delta
            place(x)
            grads.append(gradient()[idx])
        hessian[:, col] = (grads[0] - grads[1]) / (2.0 * delta)
    return 0.5 * (hessian + hessian.T)


def finite_difference_hessian(atoms: Atoms, calculator, free: np.ndarray, delta: float = FD_DELTA) -> np.ndarray:
    """Hessian of the energy over the ``free`` coordinates by central differences of the forces,
    symmetrised, [m, m] eV/Å² (m = free.sum(); 2m force calls of ``calculator``)."""
    probe = _probe(atoms, calculator)
    return _central_difference_hessian(atoms.get_positions().ravel(), lambda x: probe.set_positions(x.reshape(-1, 3)),
                                       lambda: -probe.get_forces().ravel(), np.flatnonzero(free), delta)


def hessian_columns(atoms: Atoms, calculator, indices: np.ndarray, delta: float = FD_DELTA) -> np.ndarray:
    """The Hessian's columns of the atoms ``indices`` by central differences of the forces, [k, n, 3, 3] eV/Å²:
    ``out[p, j] = ∂²E/∂x_j∂x_a`` for a = indices[p] (rows: atom j's coordinates; columns: atom a's). 6 force calls
    per atom of ``calculator``; constraints are not applied (every row is the free gradient's)."""
    probe = _probe(atoms, calculator)
    x0 = atoms.get_positions()
    out = np.empty((len(indices), len(atoms), 3, 3))
    for p, a in enumerate(indices):
        for c in range(3):
            grads = []
            for sign in (1.0, -1.0):
                x = x0.copy()
                x[a, c] += sign * delta
                probe.set_positions(x)
                grads.append(-probe.get_forces())
            out[p, :, :, c] = (grads[0] - grads[1]) / (2.0 * delta)
    return out


def full_hessian(hessian: np.ndarray, free: np.ndarray) -> np.ndarray:
    """A Hessian over the ``free`` coordinates ([m, m], m = free.sum()) placed in the [3n, 3n] matrix of every
    coordinate; zero in the rows and columns of held ones."""
    full = np.zeros((free.size, free.size))
    idx = np.flatnonzero(free)
    full[np.ix_(idx, idx)] = hessian
    return full


def columns_of(hessian: np.ndarray, free: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The columns of the atoms ``indices`` (as :func:`hessian_columns` returns them, [k, n, 3, 3]) of a Hessian
    over the ``free`` coordinates ([m, m], m = free.sum(); :func:`finite_difference_hessian`); zero where a
    coordinate is held."""
    full = full_hessian(hessian, free)
    n = free.size // 3
    cols = full[:, (3 * np.asarray(indices)[:, None] + np.arange(3)).ravel()]  # [3n, 3k]
    return cols.reshape(n, 3, len(indices), 3).transpose(2, 0, 1, 3).copy()


def rigid_body_modes(atoms: Atoms) -> np.ndarray:
    """Orthonormal rigid-body displacement modes of ``atoms``, [3n, k]: the 3 translations when no
    constraint holds an atom, and without periodicity also the 3 rotations about the centre (2 for a
    line); k = 0 when a constraint holds atoms. At a converged, not exactly stationary point their
    curvature is of the order of the residual forces over the size (~±0.05 eV/Å² for a molecule),
    not a property of the minimum, so :func:`lowest_curvature` leaves them out."""
    n = len(atoms)
    if atoms.constraints or n < 2:
        return np.zeros((3 * n, 0))
    modes = [np.tile(np.eye(3)[d], n) for d in range(3)]
    if not atoms.pbc.any():
        r = atoms.positions - atoms.positions.mean(axis=0)
        modes += [np.cross(np.eye(3)[d], r).ravel() for d in range(3)]
    u, sv, _ = np.linalg.svd(np.stack(modes, axis=1), full_matrices=False)
    return u[:, sv > 1e-6 * sv.max()]


def cell_filter_hessian(atoms: Atoms, calculator, free: np.ndarray, delta: float = FD_DELTA) -> np.ndarray:
    """Hessian over ``FrechetCellFilter(atoms)``'s generalised coordinates (the ``free`` atom coordinates, then the
    9 cell coordinates) by central differences of the filter's forces, symmetrised, [m + 9, m + 9] (2(m + 9) force
    and stress calls of ``calculator``). Its eigenvalues' signs tell a minimum of atoms and cell from a saddle: a
    cell held at a symmetric stationary point (an elastic instability) shows here and not in the atoms' Hessian."""
    probe = _probe(atoms, calculator)
    rows = FrechetCellFilter(probe)
    idx = np.concatenate([np.flatnonzero(free), free.size + np.arange(CELL_COORDINATES)])
    return _central_difference_hessian(rows.get_positions().ravel(), lambda x: rows.set_positions(x.reshape(-1, 3)),
                                       lambda: -rows.get_forces().ravel(), idx, delta)


def lowest_mode(atoms: Atoms, calculator: Any, free: np.ndarray | None = None,
                cell: bool = False) -> tuple[float, np.ndarray | None]:
    """(lowest eigenvalue, its unit eigenvector) of the finite-difference Hessian of ``atoms`` over the coordinates
    its constraints leave free (``free``, [3n] bool, found here when not given), by ``calculator``, rigid-body modes
    left out (:func:`rigid_body_modes`); (nan, None) when nothing else is free.

    ``cell=False``: the atoms' Cartesian coordinates (eV/Å², 6 force calls per free atom; the vector is [3n], zero
    where held). ``cell=True``: ``FrechetCellFilter``'s generalised coordinates (:func:`cell_filter_hessian`, 6 calls
    per free atom + 18; the vector is [3n + 9], the filter's rows flattened), as ``--relax-cell`` relaxes them."""
    free = free_coordinates(atoms) if free is None else free
    extra = CELL_COORDINATES if cell else 0
    if not free.any() and not extra:
        return math.nan, None
    hessian = (cell_filter_hessian if cell else finite_difference_hessian)(atoms, calculator, free)
    rigid = rigid_body_modes(atoms)[free]
    rigid = np.vstack([rigid, np.zeros((extra, rigid.shape[1]))])  # a rigid translation leaves the cell rows alone
    rest = np.eye(hessian.shape[0])
    if rigid.shape[1]:  # the Hessian on the complement of the rigid-body modes
        q, _ = np.linalg.qr(rigid, mode="complete")
        rest = q[:, rigid.shape[1]:]
        hessian = rest.T @ hessian @ rest
    if not hessian.size:
        return math.nan, None
    values, vectors = np.linalg.eigh(hessian)
    vector = np.zeros(free.size + extra)
    vector[np.concatenate([np.flatnonzero(free), free.size + np.arange(extra)])] = rest @ vectors[:, 0]
    return float(values[0]), vector


def mode_energy_curvature(atoms: Atoms, calculator: Any, vector: np.ndarray, cell: bool = False,
                          step: float = CONFIRM_STEP) -> float:
    """Second difference of the energy along the unit ``vector`` of :func:`lowest_mode` (same ``cell``), at ±``step``:
    (E(x + h·v) + E(x − h·v) − 2E(x)) / h², 3 energy calls of ``calculator``. The curvature of the energy over a
    finite stretch of the mode, blind to roughness on the finite differences' scale."""
    probe = _probe(atoms, calculator)
    rows = FrechetCellFilter(probe) if cell else probe
    x0 = rows.get_positions().ravel()
    energies = []
    for sign in (0.0, 1.0, -1.0):
        rows.set_positions((x0 + sign * step * vector).reshape(-1, 3))
        energies.append(float(probe.get_potential_energy()))
    return (energies[1] + energies[2] - 2.0 * energies[0]) / step ** 2


def confirmed_curvature(atoms: Atoms, calculator: Any, free: np.ndarray | None = None,
                        cell: bool = False) -> tuple[float, int]:
    """(lowest curvature, calculator calls spent): the lowest eigenvalue of :func:`lowest_mode` (eV/Å² for the atoms'
    coordinates; over the cell filter's rows with ``cell``; nan when nothing is free). An eigenvalue that marks a
    saddle (:func:`is_saddle`) must be confirmed by the energy along its mode (:func:`mode_energy_curvature`, 3
    calls more): the larger of the two is returned, so a point is a saddle only when the energy curves down over
    ±:data:`CONFIRM_STEP` too."""
    free = free_coordinates(atoms) if free is None else free
    value, vector = lowest_mode(atoms, calculator, free, cell)
    calls = 2 * (int(free.sum()) + (CELL_COORDINATES if cell else 0)) if vector is not None else 0
    if vector is None or not is_saddle(value):
        return value, calls
    return max(value, mode_energy_curvature(atoms, calculator, vector, cell)), calls + 3


def lowest_curvature(atoms: Atoms, calculator: Any, free: np.ndarray | None = None, cell: bool = False) -> float:
    """The lowest curvature of :func:`confirmed_curvature` (a negative eigenvalue confirmed by the energy)."""
    return confirmed_curvature(atoms, calculator, free, cell)[0]


def curvature_if_small(atoms: Atoms, calculator: Callable[[], Any], max_atoms: int,
                       free: np.ndarray | None = None, cell: bool = False) -> float | None:
    """:func:`lowest_curvature` of ``atoms`` (over the cell filter's rows with ``cell``) when at most ``max_atoms``
    of its atoms are free (``free`` as there), on the calculator ``calculator()`` makes (called only then); None
    when more are free."""
    free = free_coordinates(atoms) if free is None else free
    if not small_enough(free, max_atoms):
        return None
    return lowest_curvature(atoms, calculator(), free, cell)


def small_enough(free: np.ndarray, max_atoms: int) -> bool:
    """Whether at most ``max_atoms`` atoms' worth of coordinates are ``free`` ([3n] bool): the size a saddle check runs at."""
    return int(free.sum()) <= 3 * max_atoms


def is_saddle(curvature: float | None) -> bool:
    """Whether a lowest curvature (eV/Å²; None or nan = not checked) marks a saddle point, not a minimum."""
    return curvature is not None and math.isfinite(curvature) and curvature < -SADDLE_CURVATURE_EV_PER_A2


class CurvatureProbe:
    """Training-only curvature for the 'model-hessian' head: the Hessian's columns of ``k`` random free atoms of
    an environment's current structure (:func:`hessian_columns`, 6 force calls per atom on a calculator of its
    own), or slices of a teacher's Hessian of the same state (``last_hessian``: no force call). ``force_calls``
    counts what it spent; ``RLOptimizer`` never uses any of this."""

    def __init__(self, k: int, calculator: Callable[[], Any], rng: np.random.Generator) -> None:
        self.k, self._make, self.rng = int(k), calculator, rng
        self._calc: Any = None
        self.force_calls = 0

    def measure(self, atoms: Atoms, free: np.ndarray | None,
                last_hessian: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """(probe_atoms [k'] int64, probe_columns [k', n, 3, 3] eV/Å²) of ``atoms`` with ``free`` ([n, 3] mask or
        None), k' = min(k, free atoms), rows of held coordinates zero; None when no atom is free."""
        movable = np.flatnonzero(np.ones(len(atoms), bool) if free is None else np.asarray(free).any(axis=1))
        if not len(movable) or self.k <= 0:
            return None
        picked = np.sort(self.rng.choice(movable, size=min(self.k, len(movable)), replace=False)).astype(np.int64)
        if last_hessian is not None and np.array_equal(last_hessian[0], atoms.get_positions()):
            return picked, columns_of(last_hessian[1], last_hessian[2], picked)
        if self._calc is None:
            self._calc = self._make()
        self._calc.reset()
        self.force_calls += 6 * len(picked)
        cols = hessian_columns(atoms, self._calc, picked)
        if free is not None:  # rows of held coordinates are zero, as in a teacher's Hessian over the free ones
            cols *= np.asarray(free)[None, :, :, None]
        return picked, cols
