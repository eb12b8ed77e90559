"""Finite-difference Hessians on the coordinates ASE constraints leave free, and the saddle-point check.

    free = free_coordinates(atoms)                      # [3n] bool
    hessian = finite_difference_hessian(atoms, EMT(), free)   # [m, m] eV/Å², 2m force calls
    lowest_curvature(atoms, EMT())                      # eV/Å², rigid-body modes left out
    curvature_if_small(atoms, EMT, max_atoms=24)        # the same, None above 24 free atoms
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

FD_DELTA = 1e-3
"""Displacement (Å) of the central differences of :func:`finite_difference_hessian`."""

SADDLE_CURVATURE_EV_PER_A2 = 0.05
"""A converged run whose lowest Hessian eigenvalue is below −this (eV/Å²) is flagged as ending on a saddle point:
well beyond the finite-difference noise of the near-zero translation and rotation modes of free clusters."""


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


def finite_difference_hessian(atoms: Atoms, calculator, free: np.ndarray, delta: float = FD_DELTA) -> np.ndarray:
    """Hessian of the energy over the ``free`` coordinates by central differences of the forces,
    symmetrised, [m, m] eV/Å² (m = free.sum(); 2m force calls of ``calculator``)."""
    probe = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    probe.calc = calculator
    x0 = atoms.get_positions().ravel()
    idx = np.flatnonzero(free)
    hessian = np.empty((len(idx), len(idx)))
    for col, k in enumerate(idx):
        grads = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x[k] += sign * delta
            probe.set_positions(x.reshape(-1, 3))
            grads.append(-probe.get_forces().ravel()[idx])
        hessian[:, col] = (grads[0] - grads[1]) / (2.0 * delta)
    return 0.5 * (hessian + hessian.T)


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


def lowest_curvature(atoms: Atoms, calculator: Any, free: np.ndarray | None = None) -> float:
    """Lowest eigenvalue (eV/Å²) of the finite-difference Hessian of ``atoms`` over the coordinates its
    constraints leave free (``free``, [3n] bool, found here when not given), by ``calculator`` (6 force
    calls per free atom), rigid-body modes left out (:func:`rigid_body_modes`); nan when nothing else is free."""
    free = free_coordinates(atoms) if free is None else free
    hessian = finite_difference_hessian(atoms, calculator, free) if free.any() else np.zeros((0, 0))
    rigid = rigid_body_modes(atoms)[free]
    if rigid.shape[1]:  # the Hessian on the complement of the rigid-body modes
        q, _ = np.linalg.qr(rigid, mode="complete")
        rest = q[:, rigid.shape[1]:]
        hessian = rest.T @ hessian @ rest
    return float(np.linalg.eigvalsh(hessian)[0]) if hessian.size else math.nan


def curvature_if_small(atoms: Atoms, calculator: Callable[[], Any], max_atoms: int,
                       free: np.ndarray | None = None) -> float | None:
    """:func:`lowest_curvature` of ``atoms`` when at most ``max_atoms`` of its atoms are free (``free`` as there),
    on the calculator ``calculator()`` makes (called only then); None when more are free."""
    free = free_coordinates(atoms) if free is None else free
    if free.sum() > 3 * max_atoms:
        return None
    return lowest_curvature(atoms, calculator(), free)


def is_saddle(curvature: float | None) -> bool:
    """Whether a lowest curvature (eV/Å²; None or nan = not checked) marks a saddle point, not a minimum."""
    return curvature is not None and math.isfinite(curvature) and curvature < -SADDLE_CURVATURE_EV_PER_A2
