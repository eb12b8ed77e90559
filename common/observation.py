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
    def fmax(self) -> float:
        """Largest per-atom force norm, eV/Å."""
        return float(np.linalg.norm(self.forces, axis=1).max()) if self.n_atoms else 0.0


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


def env_features(fmax: float, step_fraction: float, last_a_back: float, dim: int) -> np.ndarray:
    """The global env features, in order: log10 Fmax (eV/Å), step fraction, last a_back; first ``dim`` of them."""
    feats = np.array([np.log10(max(fmax, 1e-6)), step_fraction, last_a_back], dtype=np.float64)
    return feats[:dim].copy()
