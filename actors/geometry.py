"""Geometry helpers on ASE structures shared by the structure check (actors/structure_check.py), the
curriculum (actors/curriculum.py), the Al–Fe cells (actors/alfe.py) and the crystals (actors/crystals.py):
overlapping pairs, random displacements and random cell strains, and the bounds that keep every neighbour
search finite (:func:`cell_problem`, :func:`search_images`, :func:`isolation_problem`). Units: Å."""
from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from ase.cell import Cell
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list
from scipy.spatial import cKDTree

SEARCH_CUTOFF = 10.0
"""The longest neighbour search relaxrl makes on a structure, Å (network.radius ≤ common.config.MAX_RADIUS,
overlap limits ≤ 2 × the largest covalent radius, the isolation search): :func:`cell_problem` sizes the
periodic-image count with it."""
MAX_SEARCH_IMAGES = 20_000
"""Most periodic images (cells) a neighbour search of :data:`SEARCH_CUTOFF` may scan: a cell with planes
closer than about 1 Å (a flat, a skewed or a shrunken cell) would need millions, memory without end."""
MIN_CELL_SKEW = 1e-3
"""Smallest volume / (|a|·|b|·|c|) of a cell: below it the vectors are almost in one plane (nearly singular)."""
VOLUME_PER_ATOM = (1.0, 1e6)
"""Range of a fully periodic cell's volume per atom, Å³ (solids and liquids hold about 5–100): outside it
the cell or the coordinates are in another unit (pm read as Å: ×10⁶; a cell scaled by 0.01: ×10⁻⁶)."""
ISOLATED_DISTANCE = 8.0
"""A structure of two or more atoms none of which has a neighbour within this distance (Å, periodic images
included) is a gas of isolated atoms: every force is ~0 and any optimizer 'converges' in 0 steps."""


def search_images(cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> int:
    """How many periodic images (cells) a neighbour search of ``cutoff`` Å scans in this cell: along each
    periodic axis k, 2·⌈cutoff / h_k⌉ + 1 with h_k the distance between lattice planes. Non-periodic axes add none."""
    c = np.asarray(Cell(np.asarray(cell, dtype=np.float64)).complete(), dtype=np.float64)
    volume = abs(float(np.linalg.det(c)))
    count = 1
    for k in range(3):
        if not pbc[k]:
            continue
        area = float(np.linalg.norm(np.cross(c[(k + 1) % 3], c[(k + 2) % 3])))
        if volume <= 0 or area <= 0:
            return math.inf  # type: ignore[return-value]
        count *= 2 * math.ceil(cutoff / (volume / area)) + 1
    return count


def cell_problem(atoms: Atoms) -> str | None:
    """Why the cell of ``atoms`` cannot be searched for neighbours in bounded time and memory, or None.

    A (nearly) singular cell (its vectors almost in one plane, non-periodic ones completed as ASE does), a
    fully periodic cell whose volume per atom is outside :data:`VOLUME_PER_ATOM`, and a cell so thin or
    skewed that a :data:`SEARCH_CUTOFF` search would scan more than :data:`MAX_SEARCH_IMAGES` images.
    """
    c = np.asarray(Cell(np.asarray(atoms.cell, dtype=np.float64)).complete(), dtype=np.float64)
    lengths = np.linalg.norm(c, axis=1)
    volume = abs(float(np.linalg.det(c)))
    skew = volume / float(np.prod(lengths)) if np.all(lengths > 0) else 0.0
    if not math.isfinite(skew) or skew < MIN_CELL_SKEW:
        state = "singular" if skew < 1e-12 else "nearly singular"
        return (f"its cell is {state}: the three cell vectors lie (almost) in one plane (volume {volume:.3g} Å³, "
                f"{skew:.2g} × |a|·|b|·|c|); give the structure's real cell (if the lattice is right but the vectors "
                "are badly chosen, reduce it first: ase.build.niggli_reduce)")
    if atoms.pbc.all():
        per_atom = volume / len(atoms)
        low, high = VOLUME_PER_ATOM
        if not low <= per_atom <= high:
            return (f"its volume per atom is {per_atom:.3g} Å³ where solids and liquids hold about 5–100 Å³: the cell "
                    "and coordinates are in another unit (pm or nm read as Å?) or scaled by mistake; fix the file")
    images = search_images(c, atoms.pbc, SEARCH_CUTOFF)
    if images > MAX_SEARCH_IMAGES:
        return (f"its cell is so thin or skewed that a {SEARCH_CUTOFF:g} Å neighbour search would scan {images:.3g} "
                f"periodic images (at most {MAX_SEARCH_IMAGES} are allowed); reduce the cell "
                "(ase.build.niggli_reduce) and write the structure again")
    return None


def isolation_problem(atoms: Atoms) -> str | None:
    """Why ``atoms`` (two or more atoms) is a gas of isolated atoms (nothing within :data:`ISOLATED_DISTANCE` of any
    atom, images included), or None. One atom alone (in a box or not) is left alone: its force is zero by symmetry."""
    if len(atoms) < 2:
        return None
    for cutoff in (3.0, ISOLATED_DISTANCE):  # nearly every structure answers within 3 Å, at little cost
        if len(neighbor_list("d", atoms, cutoff, self_interaction=False)):
            return None
    nearest = ""
    if not atoms.pbc.any():
        d, _ = cKDTree(atoms.positions).query(atoms.positions, k=2)
        nearest = f" (the nearest pair is {float(d[:, 1].min()):.4g} Å apart)"
    return (f"no atom has another within {ISOLATED_DISTANCE:g} Å{nearest}, so nothing binds them and every optimizer "
            "would 'converge' in 0 steps: the coordinates are in another unit (pm read as Å?); fix the file")


def find_overlaps(atoms: Atoms, factor: float) -> list[tuple[int, int, float, float]]:
    """Pairs (i, j, distance Å, limit Å) closer than factor × (r_cov,i + r_cov,j), images included.

    Raises ValueError for a cell the search could not finish in bounded memory (:func:`cell_problem`
    says why; :func:`actors.structure_check.check_structure` refuses such cells first)."""
    if len(atoms) < 2 or factor <= 0:
        return []
    radii = covalent_radii[atoms.numbers]
    cutoff = 2.0 * factor * float(radii.max())
    if search_images(atoms.cell, atoms.pbc, cutoff) > MAX_SEARCH_IMAGES:
        raise ValueError(f"find_overlaps: {cell_problem(atoms) or 'the cell is too thin for a bounded search'}")
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


def random_strain(atoms: Atoms, max_strain: float, rng: np.random.Generator, min_distance_factor: float = 0.6,
                  tries: int = 50) -> Atoms:
    """A copy of a periodic ``atoms`` with the cell strained by a random symmetric ε (each component uniform in
    ±``max_strain``, the two halves of an off-diagonal pair averaged) and the atoms following the cell, no pair
    overlapping (closer than ``min_distance_factor`` × covalent radii, the environment's check): an ε that
    squeezes a pair is drawn again, smaller every 10 tries, and the unstrained copy is returned when none fits. A
    structure that is not periodic in all three directions is copied unchanged. Info and constraints are kept."""
    if max_strain <= 0 or not atoms.pbc.all():
        return atoms.copy()
    scale = max_strain
    for t in range(tries):
        if t and t % 10 == 0:
            scale *= 0.8
        eps = rng.uniform(-scale, scale, size=(3, 3))
        eps = 0.5 * (eps + eps.T)
        out = atoms.copy()
        out.set_cell(np.asarray(atoms.cell) @ (np.eye(3) + eps), scale_atoms=True)
        if not find_overlaps(out, min_distance_factor):
            return out
    return atoms.copy()
