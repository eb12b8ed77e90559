"""Geometry helpers on ASE structures shared by the structure check (actors/structure_check.py), the
curriculum (actors/curriculum.py), the Al–Fe cells (actors/alfe.py) and the crystals (actors/crystals.py):
overlapping pairs, random displacements and random cell strains. Units: Å."""
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


def random_strain(atoms: Atoms, max_strain: float, rng: np.random.Generator) -> Atoms:
    """A copy of a periodic ``atoms`` with the cell strained by a random symmetric ε (each component uniform in
    ±``max_strain``, the two halves of an off-diagonal pair averaged) and the atoms following the cell; a
    structure that is not periodic in all three directions is copied unchanged. Info and constraints are kept."""
    out = atoms.copy()
    if max_strain <= 0 or not atoms.pbc.all():
        return out
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    out.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
    return out
