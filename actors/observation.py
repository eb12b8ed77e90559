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

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def fmax(self) -> float:
        """Largest per-atom force norm, eV/Å."""
        return float(np.linalg.norm(self.forces, axis=1).max()) if self.n_atoms else 0.0


def env_features(fmax: float, step_fraction: float, last_a_back: float, dim: int) -> np.ndarray:
    """The global env features, in order: log10 Fmax (eV/Å), step fraction, last a_back; first ``dim`` of them."""
    feats = np.array([np.log10(max(fmax, 1e-6)), step_fraction, last_a_back], dtype=np.float64)
    return feats[:dim].copy()
