"""The generalisation suite: a fixed, seeded set of structures a trained policy is judged on.

    from actors.suite import generalisation_suite, SUITE_KINDS
    structures = generalisation_suite()          # [Atoms], each with info["kind"] and info["name"]

It mixes held-out draws of the kinds the presets train on with kinds they never see, so one
number does not hide a policy that only works on its training distribution:

| kind | in training? | what |
|---|---|---|
| ``cluster`` | yes (kind) | random compact clusters of 5–11 atoms, fcc EMT metals, some binary |
| ``bulk`` | yes (kind) | rattled fcc supercells (4, 8 atoms) of several metals |
| ``slab`` | yes (kind) | rattled fcc(111)/(100) slabs of several metals |
| ``cluster-large`` | no | clusters of 32–40 atoms: at least twice the largest generated training cluster (16) |
| ``molecule`` | no | small H/C/N/O molecules (ASE's g2 geometries), rattled |
| ``adsorbate`` | no | O, N, H, C, CO on metal slabs whose two bottom layers are fixed by ``FixAtoms`` |

Every structure comes from its own RNG stream ``[SUITE_SEED, kind, k]``; training structures
come from ``[run.seed, k]`` streams, so no suite structure is a training structure. The seed
and the content are fixed: they are not tuned to any policy. Elements are those of ASE's
EMT (H, C, N, O, Al, Ni, Cu, Pd, Ag, Pt, Au), so the suite runs with the default calculator;
with another calculator, structures with elements it does not support are dropped by name.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms

from actors.calculators import calculator_elements
from actors.generate import adsorbate_on_slab, random_cluster, rattled_bulk, rattled_molecule, rattled_slab

SUITE_SEED = 20261202
"""Seed of every suite structure (fixed; a different seed is a different suite)."""

VALIDATION_SEED = SUITE_SEED + 1
"""Seed of the validation draw (``relaxrl eval --structures suite-val``): the same recipes with other
random draws, for choosing settings without looking at the suite that judges them."""

SUITE_KINDS = ("cluster", "bulk", "slab", "cluster-large", "molecule", "adsorbate")
"""The kinds, in report order."""

IN_TRAINING_KINDS = frozenset({"cluster", "bulk", "slab"})
"""Kinds the generated training structures (curriculum.source = 'demo') are drawn from."""

_METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")


def _rng(kind: str, k: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SUITE_KINDS.index(kind), k])


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


def generalisation_suite(kinds: tuple[str, ...] | list[str] = SUITE_KINDS, calculator: str = "emt",
                         seed: int = SUITE_SEED) -> list[Atoms]:
    """The suite's structures of ``kinds`` (in :data:`SUITE_KINDS` order), named ``<kind>-<formula>-<k>``.

    Each keeps its ASE constraints; ``info["kind"]`` is its kind. Structures with elements
    that ``calculator`` does not support are left out (none for EMT). ``seed`` :data:`VALIDATION_SEED`
    gives the validation draw; the default is the suite."""
    unknown = [k for k in kinds if k not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown suite kind(s) {unknown}; the suite has {list(SUITE_KINDS)}")
    allowed = calculator_elements(calculator)
    out = []
    for kind in SUITE_KINDS:
        if kind not in kinds:
            continue
        for k, atoms in enumerate(_BUILDERS[kind](seed)):
            if allowed is not None and not set(atoms.get_chemical_symbols()) <= allowed:
                continue
            atoms.info["kind"] = kind
            atoms.info["name"] = f"{kind}-{atoms.get_chemical_formula()}-{k}"
            out.append(atoms)
    return out
