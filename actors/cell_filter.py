"""The coordinates a relaxation moves: the atoms' positions, or a cell filter's rows (atoms and cell).

    rows = coordinates(atoms, relax_cell=True)   # FilterRows (ASE's FrechetCellFilter) or AtomRows
    x = rows.get()                                 # [n_rows, 3]: n atom rows (+ 3 cell rows)
    reached = rows.set(x + move)                   # ASE constraints applied: the rows actually reached
    forces = rows.forces()                         # [n_rows, 3] generalised forces, constraints applied
    positions, cell = rows.frame()                 # the atom rows and the cell they live in (action correction)

With the cell, the rows are those of ASE's ``FrechetCellFilter(atoms)`` (what FIRE, BFGS and the
other ASE optimizers move when a materials scientist relaxes a crystal): n atom rows, the
positions in the frame of the cell the filter started from (``orig_cell``: real positions
mapped back by the deformation gradient F), and 3 cell rows, ``exp_cell_factor · log F``
(exp_cell_factor = n atoms, ASE's default). Their forces are the atoms' forces mapped by F and
the derivative of the energy with respect to log F (the virial, for small F) divided by
exp_cell_factor; the convergence test is the largest row norm, as ASE's. The environment
(``env.relax_cell``) and ``RLOptimizer`` on a filter use exactly these rows, so a policy
trained on one acts on the other.

The cell rows need the calculator's stress and a structure periodic in all three directions:
:func:`check_cell_relaxable` says so in one line before anything runs.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter, UnitCellFilter

from common.errors import RelaxRLError
from common.observation import CELL_ROWS

__all__ = ["CELL_FILTER_TYPES", "AtomRows", "CellRelaxError", "FilterRows", "check_cell_relaxable", "coordinates"]

CELL_FILTER_TYPES = (FrechetCellFilter, UnitCellFilter)
"""The cell filters a policy can move (n atom rows + 3 cell rows; ``FrechetCellFilter`` subclasses
``UnitCellFilter``, so both are one isinstance test)."""


class CellRelaxError(RelaxRLError, ValueError):
    """A structure or calculator with which the cell cannot relax (not periodic, no stress)."""


def check_cell_relaxable(atoms: Atoms, calculator, name: str, option: str = "env.relax_cell") -> None:
    """Refuse, in one line naming ``name`` and ``option``, a structure whose cell cannot relax: not periodic in all
    three directions, a singular cell, or a ``calculator`` (instance) that does not compute the stress."""
    if not np.asarray(atoms.pbc).all():
        raise CellRelaxError(f"structure {name!r} is not periodic in all three directions (pbc {atoms.pbc.tolist()}), "
                             f"so its cell cannot relax; use it without {option}")
    if abs(float(np.linalg.det(np.asarray(atoms.cell)))) < 1e-9:
        raise CellRelaxError(f"structure {name!r} has a singular cell; give it a cell with volume > 0")
    props = getattr(calculator, "implemented_properties", None)
    if props is not None and "stress" not in props:
        raise CellRelaxError(f"calculator {type(calculator).__name__} does not compute the stress, which {option} "
                             "needs (the cell rows' forces); use one that does, e.g. 'emt' or 'chgnet'")


class AtomRows:
    """The atoms' Cartesian positions as the rows (the cell stays as it is)."""

    n_cell_rows = 0

    def __init__(self, atoms: Atoms):
        self.atoms = atoms

    def get(self) -> np.ndarray:
        return np.array(self.atoms.positions, dtype=np.float64)  # [n, 3] Å

    def set(self, x: np.ndarray) -> np.ndarray:
        """Move to ``x`` through the atoms' ASE constraints; returns the positions reached."""
        target = np.array(x, dtype=np.float64)
        for c in self.atoms.constraints:
            c.adjust_positions(self.atoms, target)
        self.atoms.set_positions(target, apply_constraint=False)
        return target

    def restore(self, x: np.ndarray) -> None:
        """Put back rows that were reached before (no constraint needs to act)."""
        self.atoms.set_positions(x, apply_constraint=False)

    def forces(self) -> np.ndarray:
        return np.asarray(self.atoms.get_forces(apply_constraint=True), dtype=np.float64)  # [n, 3] eV/Å

    def frame(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(atom rows [n, 3] Å, the cell [3, 3] Å they are Cartesian positions in)."""
        return x, np.array(self.atoms.cell[:], dtype=np.float64)


class FilterRows:
    """ASE's ``FrechetCellFilter`` rows: n atom rows and 3 cell rows (module docstring)."""

    n_cell_rows = CELL_ROWS

    def __init__(self, atoms: Atoms):
        self.atoms = atoms
        self.filter = FrechetCellFilter(atoms)

    def get(self) -> np.ndarray:
        return np.asarray(self.filter.get_positions(), dtype=np.float64)  # [n + 3, 3]

    def set(self, x: np.ndarray) -> np.ndarray:
        """Move the cell and the atoms to rows ``x`` (the atoms through their ASE constraints, as the filter does);
        returns the rows reached."""
        self.filter.set_positions(np.asarray(x, dtype=np.float64))
        return self.get()

    def restore(self, x: np.ndarray) -> None:
        self.filter.set_positions(np.asarray(x, dtype=np.float64))

    def forces(self) -> np.ndarray:
        return np.asarray(self.filter.get_forces(), dtype=np.float64)  # [n + 3, 3] eV/Å (generalised)

    def frame(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(atom rows [n, 3], the filter's starting cell [3, 3] Å, in whose frame the atom rows are positions)."""
        return x[:len(self.atoms)], np.array(self.filter.orig_cell, dtype=np.float64)


def coordinates(atoms: Atoms, relax_cell: bool) -> AtomRows | FilterRows:
    """The rows a relaxation of ``atoms`` moves: :class:`FilterRows` with the cell, else :class:`AtomRows`."""
    return FilterRows(atoms) if relax_cell else AtomRows(atoms)
