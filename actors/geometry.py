"""Geometry helpers on ASE structures shared by the structure check (actors/structure_check.py), the
curriculum (actors/curriculum.py) and the Al–Fe cells (actors/alfe.py): overlapping pairs and random
displacements. Units: Å."""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list


def find_overlaps(atoms: Atoms, factor: float) -> list[tuple[int, int, float, float]]:
    """Pairs (i, j, distance Å, limit Å) closer than factor × (r_cov,i + r_cov,j), images included."""
    if len(atoms) < 2 or factor <= 0:
        return []
    radii = covalent_radii[atoms.numbers]
    cutoff = 2.0 * factor * float(radii.max())
    i, j, d = neighbor_list("ijd", atoms, cutoff, self_interaction=False)
    limit = factor * (radii[i] + radii[j])
    bad = (d < limit) & (i <= j)
    return [(int(a), int(b), float(x), float(y)) for a, b, x, y in zip(i[bad], j[bad], d[bad], limit[bad])]


def perturb(atoms: Atoms, max_disp: float, rng: np.random.Generator, min_distance_factor: float = 0.6,
            tries: int = 50) -> Atoms:
    """A copy with each atom displaced uniformly within a ball of ``max_disp`` Å, no pair overlapping."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    out.info.update({k: v for k, v in atoms.info.items() if k != "perturb"})
    scale = max_disp
    for t in range(tries):
        if t and t % 10 == 0:
            scale *= 0.8  # a dense cell may not fit full-size kicks; shrink rather than loop forever
        d = rng.normal(size=(len(atoms), 3))  # [n_atoms, 3]
        d *= (scale * rng.random((len(atoms), 1)) ** (1 / 3)) / np.linalg.norm(d, axis=1, keepdims=True)
        out.positions = atoms.positions + d
        if not find_overlaps(out, min_distance_factor):
            return out
    out.positions = atoms.positions.copy()
    return out
