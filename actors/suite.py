"""The generalisation suite: a fixed, seeded set of structures a trained policy is judged on.

    from actors.suite import generalisation_suite, SUITE_KINDS
    structures = generalisation_suite()          # [Atoms], each with info["kind"] and info["name"]

It mixes held-out draws of the kinds the presets train on with kinds and sizes a preset may never see, so one
number does not hide a policy that only works on its training distribution. Which of them the presets' generated
training sets have (``curriculum.n_molecules``, ``n_adsorbates``; ``curriculum.n_large_clusters`` would add clusters of
20–64 atoms; never these structures):

| kind | in training? | what |
|---|---|---|
| ``cluster`` | yes (kind) | random compact clusters of 5–11 atoms, fcc EMT metals, some binary |
| ``bulk`` | yes (kind) | rattled fcc supercells (4, 8 atoms) of several metals |
| ``slab`` | yes (kind) | rattled fcc(111)/(100) slabs of several metals |
| ``cluster-large`` | no (size) | clusters of 32–40 atoms: twice the presets' largest generated cluster (16) |
| ``molecule`` | yes (kind) | small H/C/N/O molecules (ASE's g2 geometries), rattled: none of the training ones |
| ``adsorbate`` | yes (kind) | O, N, H, C, CO on metal slabs whose two bottom layers are fixed by ``FixAtoms`` |

Every structure comes from its own RNG stream ``[SUITE_SEED, kind, k]``; training structures
come from streams that start with ``run.seed`` (``[run.seed, k]``, the large cells' and clusters' with a constant
between), so no suite structure is a training structure. The seed
and the content are fixed: they are not tuned to any policy. Elements are those of ASE's
EMT (H, C, N, O, Al, Ni, Cu, Pd, Ag, Pt, Au), so the suite runs with the default calculator;
with another calculator, structures with elements it does not support are dropped by name.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111
from ase.cluster import Icosahedron, Octahedron
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states

from actors.calculators import calculator_elements
from actors.generate import adsorbate_on_slab, random_cluster, rattled_bulk, rattled_molecule, rattled_slab

SUITE_SEED = 20261202
"""Seed of every suite structure (fixed; a different seed is a different suite)."""

VALIDATION_SEED = SUITE_SEED + 1
"""Seed of the validation draw (``relaxrl eval --structures suite-val``): the same recipes with other
random draws, for choosing settings without looking at the suite that judges them."""

SUITE_KINDS = ("cluster", "bulk", "slab", "cluster-large", "molecule", "adsorbate")
"""The kinds, in report order."""

LARGE_KINDS = ("bulk-defect", "alloy", "nanoparticle", "cluster-xl", "slab-large", "adsorbate-layer")
"""The kinds of the large suite (:func:`large_suite`, ``--structures suite-large``), in report order."""

IN_TRAINING_KINDS = frozenset({"cluster", "bulk", "slab"})
"""Kinds the generated training structures (curriculum.source = 'demo') are drawn from."""

_METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")


def _rng(kind: str, k: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, (SUITE_KINDS + LARGE_KINDS).index(kind), k])


def _clusters(seed: int) -> list[Atoms]:
    out = []
    for k, n in enumerate((5, 6, 7, 9, 11)):
        rng = _rng("cluster", k, seed)
        a, b = rng.choice(_METALS, size=2)
        symbols = [a if (k % 2 == 0 or rng.random() < 0.5) else b for _ in range(n)]
        out.append(random_cluster(symbols, rng))
    return out


def _bulk(seed: int) -> list[Atoms]:
    return [rattled_bulk(el, n, _rng("bulk", k, seed), rattle=0.12)
            for k, (el, n) in enumerate((("Cu", 4), ("Ni", 8), ("Pd", 8), ("Au", 4), ("Al", 8)))]


def _slabs(seed: int) -> list[Atoms]:
    recipes = (("Pt", (2, 2, 3), "111"), ("Ag", (2, 2, 3), "100"), ("Ni", (2, 2, 4), "111"), ("Cu", (3, 3, 3), "111"))
    return [rattled_slab(el, size, _rng("slab", k, seed), rattle=0.1, facet=facet)
            for k, (el, size, facet) in enumerate(recipes)]


def _large_clusters(seed: int) -> list[Atoms]:
    return [random_cluster([el] * n, _rng("cluster-large", k, seed))
            for k, (el, n) in enumerate((("Cu", 32), ("Ag", 36), ("Pd", 40)))]


def _molecules(seed: int) -> list[Atoms]:
    return [rattled_molecule(name, _rng("molecule", k, seed), rattle=0.05)
            for k, name in enumerate(("CH4", "NH3", "H2O", "C2H4", "CH3OH"))]


def _adsorbates(seed: int) -> list[Atoms]:
    recipes = (("Cu", "111", "O", "fcc"), ("Pt", "111", "CO", "ontop"), ("Ni", "100", "N", "hollow"),
               ("Pd", "111", "H", "fcc"), ("Au", "100", "C", "hollow"))
    return [adsorbate_on_slab(metal, ads, _rng("adsorbate", k, seed), facet=facet, site=site)
            for k, (metal, facet, ads, site) in enumerate(recipes)]


_BUILDERS: dict[str, Callable[[int], list[Atoms]]] = {
    "cluster": _clusters, "bulk": _bulk, "slab": _slabs, "cluster-large": _large_clusters,
    "molecule": _molecules, "adsorbate": _adsorbates,
}


# ----------------------------------------------------------------------------- the large suite

LARGE_RATTLE = 0.15
"""Gaussian rattle (Å, per Cartesian component) of the large suite's bulk, particles and slab."""


def _rattle(atoms: Atoms, rng: np.random.Generator, scale: float = LARGE_RATTLE) -> Atoms:
    atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
    return atoms


def _fix_bottom(slab: Atoms, layers: int, fixed_layers: int = 2) -> Atoms:
    """Fix the bottom ``fixed_layers`` layers of an ase.build slab (tags count layers from the top)."""
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag > layers - fixed_layers]))
    return slab


def _defect_bulk(seed: int) -> list[Atoms]:
    """A 4×4×4 cubic Cu supercell (a = 3.6 Å, 256 sites) with one vacancy, and a 3×3×3 Ni supercell
    (108 sites) with a divacancy (two nearest-neighbour sites), both rattled."""
    rng_cu = _rng("bulk-defect", 0, seed)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (4, 4, 4)
    del cu[int(rng_cu.integers(len(cu)))]
    rng = _rng("bulk-defect", 1, seed)
    ni = bulk("Ni", "fcc", cubic=True) * (3, 3, 3)
    i = int(rng.integers(len(ni)))
    d = ni.get_distances(i, range(len(ni)), mic=True)
    nearest = np.flatnonzero(np.isclose(d, d[d > 0].min()))
    del ni[[i, int(rng.choice(nearest))]]
    return [_rattle(cu, rng_cu), _rattle(ni, rng)]


def _alloys(seed: int) -> list[Atoms]:
    """Random 50:50 fcc alloys on a Vegard lattice, rattled by 0.2 Å: Cu–Au (108 atoms), Ag–Pd (256)."""
    out = []
    for k, (a, b, reps) in enumerate((("Cu", "Au", 3), ("Ag", "Pd", 4))):
        rng = _rng("alloy", k, seed)
        lattice = 0.5 * (reference_states[atomic_numbers[a]]["a"] + reference_states[atomic_numbers[b]]["a"])
        atoms = bulk(a, "fcc", a=lattice, cubic=True) * (reps, reps, reps)
        atoms.set_chemical_symbols(rng.choice([a, b], size=len(atoms)).tolist())
        out.append(_rattle(atoms, rng, 0.2))
    return out


def _nanoparticles(seed: int) -> list[Atoms]:
    """A Cu icosahedron (147 atoms) and a truncated Pd octahedron (116 atoms), rattled."""
    return [_rattle(Icosahedron("Cu", 4), _rng("nanoparticle", 0, seed)),
            _rattle(Octahedron("Pd", 6, 2), _rng("nanoparticle", 1, seed))]


def _xl_clusters(seed: int) -> list[Atoms]:
    """A random compact Cu cluster of 100 atoms (as the suite's clusters, grown atom by atom)."""
    return [random_cluster(["Cu"] * 100, _rng("cluster-xl", 0, seed))]


def _large_slabs(seed: int) -> list[Atoms]:
    """A 6×6 Au(100) slab of 4 layers (144 atoms), the two bottom layers fixed, rattled."""
    slab = _rattle(fcc100("Au", size=(6, 6, 4), vacuum=6.0), _rng("slab-large", 0, seed))
    return [_fix_bottom(slab, 4)]


def _adsorbate_layers(seed: int) -> list[Atoms]:
    """A p(2×2) O overlayer (9 O at fcc sites) on a 6×6 Pt(111) slab of 4 layers (144 Pt), the two bottom
    layers fixed, rattled by 0.1 Å."""
    slab = fcc111("Pt", size=(6, 6, 4), vacuum=7.0)
    for i in range(3):
        for j in range(3):
            add_adsorbate(slab, "O", 1.8, position="fcc", offset=(2 * i, 2 * j))
    return [_fix_bottom(_rattle(slab, _rng("adsorbate-layer", 0, seed), 0.1), 4)]


_LARGE_BUILDERS: dict[str, Callable[[int], list[Atoms]]] = {
    "bulk-defect": _defect_bulk, "alloy": _alloys, "nanoparticle": _nanoparticles, "cluster-xl": _xl_clusters,
    "slab-large": _large_slabs, "adsorbate-layer": _adsorbate_layers,
}


def _assemble(order: tuple[str, ...], builders: dict[str, Callable[[int], list[Atoms]]], kinds: tuple[str, ...] | list[str],
              calculator: str, seed: int) -> list[Atoms]:
    unknown = [k for k in kinds if k not in builders]
    if unknown:
        raise ValueError(f"unknown suite kind(s) {unknown}; this set has {list(order)}")
    allowed = calculator_elements(calculator)
    out = []
    for kind in order:
        if kind not in kinds:
            continue
        for k, atoms in enumerate(builders[kind](seed)):
            if allowed is not None and not set(atoms.get_chemical_symbols()) <= allowed:
                continue
            atoms.info["kind"] = kind
            atoms.info["name"] = f"{kind}-{atoms.get_chemical_formula()}-{k}"
            out.append(atoms)
    return out


def generalisation_suite(kinds: tuple[str, ...] | list[str] = SUITE_KINDS, calculator: str = "emt",
                         seed: int = SUITE_SEED) -> list[Atoms]:
    """The suite's structures of ``kinds`` (in :data:`SUITE_KINDS` order), named ``<kind>-<formula>-<k>``.

    Each keeps its ASE constraints; ``info["kind"]`` is its kind. Structures with elements
    that ``calculator`` does not support are left out (none for EMT). ``seed`` :data:`VALIDATION_SEED`
    gives the validation draw; the default is the suite."""
    return _assemble(SUITE_KINDS, _BUILDERS, kinds, calculator, seed)


def large_suite(kinds: tuple[str, ...] | list[str] = LARGE_KINDS, calculator: str = "emt",
                seed: int = SUITE_SEED) -> list[Atoms]:
    """The large suite (``--structures suite-large``): 100–256-atom structures far enough from their minima
    that conditioning matters, of ``kinds`` (in :data:`LARGE_KINDS` order), named as the suite's."""
    return _assemble(LARGE_KINDS, _LARGE_BUILDERS, kinds, calculator, seed)


LARGE_SAMPLE_KINDS = ("bulk-defect", "alloy", "nanoparticle", "slab-large", "adsorbate-layer", "cluster-xl")
"""The order in which :func:`large_sample` takes the first structure of each large kind."""


def large_sample(n: int, calculator: str = "emt") -> list[Atoms]:
    """The first structure of each of the first ``n`` kinds of :data:`LARGE_SAMPLE_KINDS` (the after-training
    evaluation's large cells, ``run.eval_large``); all of them when ``n`` exceeds the kinds."""
    firsts = {}
    for atoms in large_suite(kinds=LARGE_SAMPLE_KINDS[:n], calculator=calculator):
        firsts.setdefault(atoms.info["kind"], atoms)
    return [firsts[k] for k in LARGE_SAMPLE_KINDS[:n] if k in firsts]
