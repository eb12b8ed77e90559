"""Generated structures to relax under EMT, and the train / held-out split.

``curriculum.source = 'demo'`` (:func:`demo_structures`): compact random clusters of Cu, Ag,
Au, Ni, Pd, Pt, Al (grown atom by atom next to the existing cluster, never closer than
``curriculum.min_distance``), rattled fcc bulk supercells and rattled fcc(111) / fcc(100)
slabs: mostly 3–8-atom clusters (the demo trains on those), some 9–16-atom systems, a few of
27–64 atoms; plus ``curriculum.n_molecules`` rattled H/C/N/O molecules and
``curriculum.n_adsorbates`` adsorbates on slabs whose bottom layers are fixed (``FixAtoms``,
kept by the environment); ``curriculum.n_large`` bulk and slabs of 96–128 atoms and
``curriculum.n_large_clusters`` random clusters of 20–64 atoms. Names look
like ``cluster-Cu6-s0-3`` and ``bulk-Ni32-s0-60``. The builders (:func:`random_cluster`,
:func:`rattled_bulk`, ...) also make the generalisation suite (actors/suite.py).
:func:`split_structures` splits the generated and the file sources into train and held-out
structures.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111, molecule
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states

from actors.calculators import calculator_elements
from actors.structure_check import StructureError, named_copy
from common.config import CurriculumConfig

__all__ = [
    "ADSORBATES",
    "TRAINING_MOLECULES",
    "adsorbate_on_slab",
    "demo_structures",
    "generate_demo",
    "large_cells",
    "large_clusters",
    "random_cluster",
    "rattled_bulk",
    "rattled_molecule",
    "rattled_slab",
    "split_structures",
]


def _nn_distance(symbol: str) -> float:
    """Nearest-neighbour distance of the element's fcc reference state, Å."""
    ref = reference_states[atomic_numbers[symbol]]
    return float(ref["a"]) / math.sqrt(2.0)


def random_cluster(symbols: Sequence[str], rng: np.random.Generator, min_distance: float = 2.0) -> Atoms:
    """A compact random cluster, grown atom by atom next to the existing atoms.

    Each new atom is placed at about a bond length (0.9–1.1 × the mean nearest-neighbour
    distance of the pair's elements) from a random existing atom; among 32 such candidates
    that keep every distance ≥ ``min_distance`` Å, the one closest to the centroid wins.
    """
    symbols = list(symbols)
    pos = np.zeros((1, 3))  # [n_placed, 3] Å
    for k in range(1, len(symbols)):
        best, best_score = None, math.inf
        for attempt in range(256):
            anchor = int(rng.integers(k))
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            bond = 0.5 * (_nn_distance(symbols[anchor]) + _nn_distance(symbols[k])) * rng.uniform(0.9, 1.1)
            cand = pos[anchor] + max(bond, min_distance) * direction
            if np.linalg.norm(pos - cand, axis=1).min() < min_distance:
                continue
            score = float(np.linalg.norm(cand - pos.mean(axis=0)))
            if score < best_score:
                best, best_score = cand, score
            if attempt >= 31 and best is not None:
                break
        if best is None:  # cannot happen for a finite cluster, but never loop forever
            best = pos[int(np.argmax(np.linalg.norm(pos, axis=1)))] * 1.5 + 2 * min_distance
        pos = np.vstack([pos, best])
    pos -= pos.mean(axis=0)
    return Atoms(symbols=symbols, positions=pos, pbc=False)


def rattled_bulk(symbol: str, n_atoms: int, rng: np.random.Generator, rattle: float = 0.15) -> Atoms:
    """An fcc supercell of ``n_atoms`` (4·k³ cubic or k³ primitive) with Gaussian rattle (Å)."""
    for cubic in (True, False):
        per_cell = 4 if cubic else 1
        k = round((n_atoms / per_cell) ** (1 / 3))
        if per_cell * k**3 == n_atoms:
            atoms = bulk(symbol, "fcc", cubic=cubic) * (k, k, k)
            break
    else:
        raise StructureError(f"rattled_bulk: {n_atoms} atoms is not 4·k³ or k³; pick such a size")
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def rattled_slab(symbol: str, size: tuple[int, int, int], rng: np.random.Generator, rattle: float = 0.15,
                 facet: str = "111", vacuum: float = 6.0) -> Atoms:
    """An fcc(111) or fcc(100) slab of size (nx, ny, layers) with vacuum (Å) and Gaussian rattle."""
    builder = {"111": fcc111, "100": fcc100}[facet]
    atoms = builder(symbol, size=size, vacuum=vacuum)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


TRAINING_MOLECULES = ("H2", "N2", "CO", "CO2", "HCN", "C2H2", "C2H6", "H2O2", "N2H4", "H2CO", "HCOOH", "CH3CHO")
"""ASE g2 molecules (H, C, N, O) the generated training set may hold; the generalisation suite
(actors/suite.py) judges on others (CH4, NH3, H2O, C2H4, CH3OH)."""

ADSORBATES = ("O", "N", "H", "C", "CO", "OH")
"""Adsorbates put on generated slabs."""


def rattled_molecule(name: str, rng: np.random.Generator, rattle: float = 0.05) -> Atoms:
    """ASE's g2 geometry of ``name`` with Gaussian rattle (Å), non-periodic."""
    atoms = molecule(name)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def adsorbate_on_slab(metal: str, adsorbate: str, rng: np.random.Generator, facet: str = "111",
                      layers: int = 4, fixed_layers: int = 2, rattle: float = 0.08, site: str | None = None) -> Atoms:
    """A 2×2 fcc(111)/(100) slab of ``metal`` with ``adsorbate`` at ``site`` (a random one when None),
    rattled (Å); the bottom ``fixed_layers`` layers are fixed by ``FixAtoms`` (kept by RelaxEnv)."""
    slab = {"111": fcc111, "100": fcc100}[facet](metal, size=(2, 2, layers), vacuum=7.0)
    if site is None:
        sites = ("ontop", "fcc", "hcp", "bridge") if facet == "111" else ("ontop", "hollow", "bridge")
        site = sites[int(rng.integers(len(sites)))]
    if adsorbate == "OH":  # O down
        ads = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    elif adsorbate == "CO":  # C down (g2's CO lists O first: add_adsorbate would put C 0.6 Å above the metal)
        ads = Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.15]])
    elif len(adsorbate) > 1:
        ads = molecule(adsorbate)
    else:
        ads = Atoms(adsorbate)
    height = 1.2 if adsorbate == "H" else 1.8
    add_adsorbate(slab, ads, height=height, position=site)
    slab.positions += rng.normal(scale=rattle, size=slab.positions.shape)
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > layers - fixed_layers]))
    return slab


def _bulk_or_slab(kind: str, arg: Any, metal: str, rng: np.random.Generator, rattle: float) -> Atoms:
    """A recipe's periodic structure: ``("bulk", n_atoms)`` or ``("slab", ((nx, ny, layers), facet))``."""
    if kind == "bulk":
        return rattled_bulk(metal, arg, rng, rattle)
    size, facet = arg
    return rattled_slab(metal, size, rng, rattle, facet)


def _demo_recipes(n: int) -> list[tuple[str, Any]]:
    """The mix of generated structures: ~60 % clusters of 3–8 atoms, ~15 % clusters of 9–16,
    ~10 % periodic systems of 8–16 atoms, the rest 27–64-atom bulk and slabs."""
    n_small = max(1, round(0.60 * n))
    n_mid = round(0.15 * n)
    n_mid_periodic = round(0.10 * n)
    n_big = max(0, n - n_small - n_mid - n_mid_periodic)
    mid_periodic = [("bulk", 8), ("slab", ((2, 2, 3), "111")), ("slab", ((2, 2, 4), "100")), ("bulk", 4)]
    big = [("bulk", 32), ("slab", ((3, 3, 3), "111")), ("slab", ((4, 4, 4), "111")), ("bulk", 64),
           ("slab", ((3, 3, 4), "100"))]
    recipes: list[tuple[str, Any]] = []
    recipes += [("cluster", 3 + k % 6) for k in range(n_small)]
    recipes += [("cluster", 9 + k % 8) for k in range(n_mid)]
    recipes += [mid_periodic[k % len(mid_periodic)] for k in range(n_mid_periodic)]
    recipes += [big[k % len(big)] for k in range(n_big)]
    return recipes[:n]


def _cluster_symbols(elements: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """A generated cluster's ``n`` symbols: one element, or with probability 1/4 a random mix of two."""
    first = elements[int(rng.integers(len(elements)))]
    if rng.random() < 0.25 and len(elements) > 1:  # some binary alloys
        second = elements[int(rng.integers(len(elements)))]
        return [first if rng.random() < 0.5 else second for _ in range(n)]
    return [first] * n


def generate_demo(cfg: CurriculumConfig, seed: int) -> list[Atoms]:
    """All generated structures for ``cfg`` and ``seed`` (before the split); deterministic."""
    elements = list(cfg.elements)
    allowed = calculator_elements("emt")
    bad = [e for e in elements if e not in allowed or reference_states[atomic_numbers[e]].get("symmetry") != "fcc"]
    if bad:
        raise StructureError(
            f"curriculum.elements has {', '.join(bad)}: generated structures need fcc EMT elements "
            "(Cu, Ag, Au, Ni, Pd, Pt, Al)"
        )
    out = []
    for k, (kind, arg) in enumerate(_demo_recipes(cfg.n_structures)):
        rng = np.random.default_rng([seed, k])
        if kind == "cluster":
            atoms = random_cluster(_cluster_symbols(elements, arg, rng), rng, cfg.min_distance)
        else:
            atoms = _bulk_or_slab(kind, arg, elements[int(rng.integers(len(elements)))], rng, cfg.rattle)
        name = f"{kind}-{atoms.get_chemical_formula()}-s{seed}-{k}"
        out.append(named_copy(atoms, name, kind))
    out += _extra_kinds(cfg, seed, len(out))
    return out


LARGE_RECIPES = (("bulk", 108), ("slab", ((4, 4, 6), "111")), ("slab", ((4, 4, 8), "100")), ("bulk", 125))
"""The ``curriculum.n_large`` cells in turn: 96–128 atoms, fcc bulk (4·3³, 5³) and slabs, as large as the large
suite's smaller cells (actors/suite.py) without being any of them."""


def _extra_kinds(cfg: CurriculumConfig, seed: int, start: int) -> list[Atoms]:
    """``curriculum.n_molecules`` rattled H/C/N/O molecules and ``curriculum.n_adsorbates``
    adsorbates on slabs with fixed bottom layers (metals from ``curriculum.elements``)."""
    out = []
    for j in range(cfg.n_molecules):
        k = start + j
        rng = np.random.default_rng([seed, k])
        atoms = rattled_molecule(TRAINING_MOLECULES[int(rng.integers(len(TRAINING_MOLECULES)))], rng)
        out.append(named_copy(atoms, f"molecule-{atoms.get_chemical_formula()}-s{seed}-{k}", "molecule"))
    for j in range(cfg.n_adsorbates):
        k = start + cfg.n_molecules + j
        rng = np.random.default_rng([seed, k])
        metal = cfg.elements[int(rng.integers(len(cfg.elements)))]
        atoms = adsorbate_on_slab(metal, ADSORBATES[int(rng.integers(len(ADSORBATES)))], rng,
                                  facet=("111", "100")[int(rng.integers(2))])
        clean = named_copy(atoms, f"adsorbate-{atoms.get_chemical_formula()}-s{seed}-{k}", "adsorbate")
        clean.set_constraint(atoms.constraints)
        out.append(clean)
    return out


def large_cells(cfg: CurriculumConfig, seed: int) -> list[Atoms]:
    """The ``curriculum.n_large`` rattled bulk and slabs of 96–128 atoms (:data:`LARGE_RECIPES` in turn; metals from
    ``curriculum.elements``), seeded apart from :func:`generate_demo`'s structures."""
    out = []
    for j in range(cfg.n_large):
        rng = np.random.default_rng([seed, 104729, j])
        kind, arg = LARGE_RECIPES[j % len(LARGE_RECIPES)]
        atoms = _bulk_or_slab(kind, arg, cfg.elements[int(rng.integers(len(cfg.elements)))], rng, cfg.rattle)
        out.append(named_copy(atoms, f"{kind}-{atoms.get_chemical_formula()}-s{seed}-large{j}", kind))
    return out


LARGE_CLUSTER_SIZES = (20, 26, 32, 38, 44, 50, 56, 64)
"""The ``curriculum.n_large_clusters`` clusters' sizes in turn: past the 16 atoms of :func:`generate_demo`'s largest
cluster, up to the curriculum's 64-atom stage."""


def large_clusters(cfg: CurriculumConfig, seed: int) -> list[Atoms]:
    """The ``curriculum.n_large_clusters`` compact random clusters of 20–64 atoms (:data:`LARGE_CLUSTER_SIZES` in
    turn; one metal of ``curriculum.elements``, binary with probability 1/4, as :func:`generate_demo`'s clusters), seeded
    apart from the other generated structures and from the generalisation suite's (actors/suite.py)."""
    out = []
    for j in range(cfg.n_large_clusters):
        rng = np.random.default_rng([seed, 104723, j])
        atoms = random_cluster(_cluster_symbols(cfg.elements, LARGE_CLUSTER_SIZES[j % len(LARGE_CLUSTER_SIZES)], rng),
                               rng, cfg.min_distance)
        out.append(named_copy(atoms, f"cluster-{atoms.get_chemical_formula()}-s{seed}-lc{j}", "cluster"))
    return out


def split_structures(structures: Sequence[Atoms], heldout_fraction: float, seed: int) -> tuple[list[Atoms], list[Atoms]]:
    """Deterministic train / held-out split, stratified by kind and size bucket.

    Within each group (kind, atom-count bucket ≤8, ≤16, ≤32, larger) a seeded permutation
    holds out ``round(fraction × group size)`` structures, so the held-out set spans sizes.
    Input order is kept in both outputs.
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for idx, atoms in enumerate(structures):
        bucket = next((b for b in (8, 16, 32) if len(atoms) <= b), 10**9)
        groups.setdefault((str(atoms.info.get("kind", "file")), bucket), []).append(idx)
    heldout: set[int] = set()
    rng = np.random.default_rng([seed, 7919])
    for key in sorted(groups):
        members = groups[key]
        n_out = int(math.floor(heldout_fraction * len(members) + 0.5))
        heldout.update(members[p] for p in rng.permutation(len(members))[:n_out])
    train = [a for i, a in enumerate(structures) if i not in heldout]
    held = [a for i, a in enumerate(structures) if i in heldout]
    return train, held


def demo_structures(cfg: CurriculumConfig, seed: int) -> tuple[list[Atoms], list[Atoms]]:
    """Generated structures for ``cfg`` and ``seed``, split into (train, held-out).

    The large cells (:func:`large_cells`) and the large clusters (:func:`large_clusters`) are each split on their
    own, so adding them leaves the split of the others as it was."""
    train, held = split_structures(generate_demo(cfg, seed), cfg.heldout_fraction, seed)
    for extra in (large_cells(cfg, seed), large_clusters(cfg, seed)):
        if extra:
            extra_train, extra_held = split_structures(extra, cfg.heldout_fraction, seed)
            train, held = train + extra_train, held + extra_held
    return train, held
