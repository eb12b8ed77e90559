"""The observation: what an actor sees of a structure, as plain numpy arrays.

It crosses process boundaries (Ray, the replay codec) unchanged, so it holds only
arrays and Python scalars. Units: Å for positions and cell, eV for energy, eV/Å for
forces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Observation:
    positions: np.ndarray  # [n_atoms, 3] float64, Å (Cartesian)
    numbers: np.ndarray  # [n_atoms] int64, atomic numbers
    cell: np.ndarray  # [3, 3] float64, Å (rows are lattice vectors; zeros when non-periodic)
    pbc: np.ndarray  # [3] bool
    forces: np.ndarray  # [n_atoms, 3] float64, eV/Å
    energy: float  # eV
    env_features: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [env_input_dim] float64
    # Optional precomputed neighbour list (see learner/graph.py); None when not built.
    edge_index: np.ndarray | None = None  # [2, n_edges] int64 (sender, receiver)
    edge_shift: np.ndarray | None = None  # [n_edges, 3] int64, integer cell shifts of the sender
    # Path history (what a quasi-Newton method remembers), None when not recorded: K remembered
    # steps of HISTORY_DIM columns each, newest first; columns 6k:6k+3 the actual move of step
    # t−1−k (Å), 6k+3:6k+6 the force change it caused (eV/Å); zeros for steps not taken yet
    # (the start of an episode). See :func:`history_after`.
    history: np.ndarray | None = None  # [n_atoms, 6 K] float64
    # Cell rows, present only when the cell relaxes too (a cell filter, env.relax_cell): the generalised force
    # on the filter's 3 cell rows (ASE's FrechetCellFilter: dE/d(log deformation) / exp_cell_factor, in the units
    # of a force, eV/Å) and the cell rows of the path history (moves and force changes of those rows). With them,
    # ``forces`` and ``history`` are the filter's atom rows (forces mapped by the deformation gradient, moves in
    # the filter's coordinates), and an action has n_atoms + 3 rows: atoms first, then the cell (see CELL_ROWS).
    cell_forces: np.ndarray | None = None  # [3, 3] float64, eV/Å
    cell_history: np.ndarray | None = None  # [3, 6 K] float64
    # Coordinates ASE constraints hold (FixAtoms, selective dynamics), None when every coordinate is free: 1.0 for a
    # free coordinate, 0.0 for a held one. A head that couples atoms solves on the free coordinates only.
    free: np.ndarray | None = None  # [n_atoms, 3] float64

    @classmethod
    def from_atoms(cls, atoms, forces: np.ndarray | None = None, energy: float | None = None,
                   env_features: np.ndarray | None = None) -> Observation:
        """The observation of ``atoms``; forces (eV/Å) and energy (eV) come from its calculator unless given."""
        if forces is None:
            forces = atoms.get_forces()
        if energy is None:
            energy = atoms.get_potential_energy()
        return cls(
            positions=np.array(atoms.get_positions(), dtype=np.float64),
            numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
            cell=np.array(atoms.cell.array, dtype=np.float64),
            pbc=np.array(atoms.pbc, dtype=bool),
            forces=np.asarray(forces, dtype=np.float64),
            energy=float(energy),
            env_features=np.zeros(0) if env_features is None else np.asarray(env_features, dtype=np.float64),
        )

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def has_cell_rows(self) -> bool:
        """Whether the cell relaxes too (the observation carries the filter's 3 cell rows)."""
        return self.cell_forces is not None

    @property
    def n_rows(self) -> int:
        """Rows of a move from this observation: n_atoms, plus :data:`CELL_ROWS` when the cell relaxes."""
        return self.n_atoms + (CELL_ROWS if self.has_cell_rows else 0)

    def row_forces(self) -> np.ndarray:
        """The generalised forces of every row, atoms then cell, [n_rows, 3] eV/Å."""
        if self.cell_forces is None:
            return self.forces
        return np.concatenate([self.forces, np.asarray(self.cell_forces, dtype=np.float64).reshape(CELL_ROWS, 3)])

    def row_history(self) -> np.ndarray | None:
        """The path history of every row, atoms then cell, [n_rows, 6 K] (None when not recorded)."""
        if self.history is None or self.cell_history is None:
            return self.history
        return np.concatenate([self.history, self.cell_history])

    @property
    def fmax(self) -> float:
        """Largest row norm of the (generalised) forces, eV/Å: the atoms' and, when the cell relaxes, the cell rows'
        (ASE's convergence test on a cell filter)."""
        rows = self.row_forces()
        return float(np.linalg.norm(rows, axis=1).max()) if len(rows) else 0.0


CELL_ROWS = 3
"""Rows the cell adds to a move, a force or a history when it relaxes (a cell filter's 3 extra "atoms")."""

HISTORY_DIM = 6
"""Columns of one remembered step of :attr:`Observation.history`: actual move (3, Å), force change (3, eV/Å)."""


def empty_history(n_atoms: int, steps: int = 1) -> np.ndarray:
    """The history at the start of an episode: ``steps`` remembered steps of zeros, [n_atoms, 6·steps]."""
    return np.zeros((n_atoms, HISTORY_DIM * steps))


def history_after(move: np.ndarray, forces_before: np.ndarray, forces_after: np.ndarray,
                  previous: np.ndarray | None = None) -> np.ndarray:
    """The history of the observation that follows an applied ``move`` ([n_atoms, 3] Å).

    The newest step ``[move, forces_after − forces_before]`` comes first, then ``previous``
    (the history before the move, [n_atoms, 6 K]) without its oldest step, so the width stays
    6 K; without ``previous`` the result is one step, [n_atoms, 6]."""
    newest = np.concatenate([np.asarray(move, dtype=np.float64),
                             np.asarray(forces_after, dtype=np.float64) - np.asarray(forces_before, dtype=np.float64)],
                            axis=1)
    if previous is None or previous.shape[1] <= HISTORY_DIM:
        return newest
    return np.concatenate([newest, previous[:, :-HISTORY_DIM]], axis=1)


def split_rows(rows: np.ndarray, n_atoms: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(atom rows [n_atoms, ...], cell rows [3, ...] or None) of a per-row array of n_atoms (+ 3) rows."""
    rows = np.asarray(rows)
    if rows.shape[0] == n_atoms:
        return rows, None
    if rows.shape[0] != n_atoms + CELL_ROWS:
        raise ValueError(f"array of {rows.shape[0]} rows for {n_atoms} atoms: expected {n_atoms} (atoms) or "
                         f"{n_atoms + CELL_ROWS} (atoms and the cell's {CELL_ROWS} rows)")
    return rows[:n_atoms], rows[n_atoms:]


def env_features(fmax: float, step_fraction: float, last_a_back: float, dim: int) -> np.ndarray:
    """The global env features, in order: log10 Fmax (eV/Å), step fraction, last a_back; first ``dim`` of them."""
    feats = np.array([np.log10(max(fmax, 1e-6)), step_fraction, last_a_back], dtype=np.float64)
    return feats[:dim].copy()
