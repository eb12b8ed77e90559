"""Crystals beyond Al–Fe: a named, seeded evaluation set across chemistry (``relaxrl eval --structures crystals``).

    from actors.crystals import crystal_set
    structures = crystal_set()                 # [Atoms], info["name"], info["kind"] = "crystal", info["prototype"]

Each crystal is built from a textbook prototype with ASE (``ase.build.bulk`` or
``ase.spacegroup.crystal`` from its space group, Wyckoff positions and experimental lattice
parameters), then rattled (Gaussian, σ = :data:`RATTLE` Å per coordinate) and strained (a
random symmetric strain ε whose components are uniform in ±:data:`STRAIN`, applied to the
cell with the atoms following), each from its own random stream ``[seed, k]``. So a relaxation
has to move atoms and the cell: the set is meant for cell relaxations (``--relax-cell``), as
materials scientists run them (FIRE or BFGS on ``FrechetCellFilter``).

| name | what |
|---|---|
| Si-diamond | covalent, 8 atoms (conventional cell) |
| GaAs-zincblende | covalent-polar, 8 atoms |
| GaN-wurtzite | hexagonal, 4 atoms |
| NaCl-rocksalt, MgO-rocksalt | ionic, 8 atoms each |
| CaF2-fluorite | ionic, 12 atoms |
| TiO2-rutile | oxide, 6 atoms |
| SrTiO3-perovskite | perovskite oxide, 5 atoms |
| LiCoO2-layered | layered oxide (R-3m), 12 atoms |
| SiO2-quartz | α-quartz, 9 atoms |
| Fe-bcc-vacancy | bcc metal with a vacancy, 15 atoms |
| Cu3Au-L12 | ordered alloy, 4 atoms |
| NiAl-B2 | intermetallic, 2×2×2 CsCl cell, 16 atoms |
| Ti-hcp | hcp metal, 2×2×1, 8 atoms |
| Al-fcc | fcc metal, 2×2×2, 32 atoms |
| C-graphite | layered, van der Waals, 4 atoms |
| CO2-molecular | a small-molecule crystal (dry ice, Pa-3), 12 atoms |

The elements (H–Bi) are all covered by CHGNet; ASE's EMT handles only a few metals and H, C, N, O,
so :func:`check_calculator` refuses it (and any calculator that declares it lacks an element)
with a message naming the calculator to use. The set is not tuned to any policy: the seed and
the recipes are fixed.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.spacegroup import crystal

from actors.calculators import calculator_elements
from actors.geometry import random_strain
from common.errors import RelaxRLError

__all__ = ["CRYSTAL_SEED", "PROTOTYPES", "RATTLE", "STRAIN", "CrystalsError", "check_calculator", "crystal_set"]

CRYSTAL_SEED = 20261205
"""Seed of the set (fixed; another seed is another set)."""
RATTLE = 0.05
"""Standard deviation (Å) of the Gaussian rattle of every coordinate."""
STRAIN = 0.04
"""Each component of the random symmetric strain is uniform in ±this (volume changes up to about ±12 %)."""


class CrystalsError(RelaxRLError, ValueError):
    """The crystal set cannot be used as asked (a calculator that lacks its elements)."""


def _fe_vacancy() -> Atoms:
    a = bulk("Fe", "bcc", a=2.87, cubic=True) * (2, 2, 2)
    del a[0]
    return a


PROTOTYPES: dict[str, Callable[[], Atoms]] = {
    "Si-diamond": lambda: bulk("Si", "diamond", a=5.43, cubic=True),
    "GaAs-zincblende": lambda: bulk("GaAs", "zincblende", a=5.65, cubic=True),
    "GaN-wurtzite": lambda: bulk("GaN", "wurtzite", a=3.19, c=5.19),
    "NaCl-rocksalt": lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True),
    "MgO-rocksalt": lambda: bulk("MgO", "rocksalt", a=4.21, cubic=True),
    "CaF2-fluorite": lambda: bulk("CaF2", "fluorite", a=5.46, cubic=True),
    "TiO2-rutile": lambda: crystal(["Ti", "O"], [(0, 0, 0), (0.305, 0.305, 0)], spacegroup=136,
                                   cellpar=[4.594, 4.594, 2.959, 90, 90, 90]),
    "SrTiO3-perovskite": lambda: crystal(["Sr", "Ti", "O"], [(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0)],
                                         spacegroup=221, cellpar=[3.905, 3.905, 3.905, 90, 90, 90]),
    "LiCoO2-layered": lambda: crystal(["Li", "Co", "O"], [(0, 0, 0.5), (0, 0, 0), (0, 0, 0.2396)], spacegroup=166,
                                      cellpar=[2.816, 2.816, 14.05, 90, 90, 120]),
    "SiO2-quartz": lambda: crystal(["Si", "O"], [(0.4697, 0, 1 / 3), (0.4135, 0.2669, 0.7858)], spacegroup=152,
                                   cellpar=[4.916, 4.916, 5.405, 90, 90, 120]),
    "Fe-bcc-vacancy": _fe_vacancy,
    "Cu3Au-L12": lambda: crystal(["Au", "Cu"], [(0, 0, 0), (0, 0.5, 0.5)], spacegroup=221,
                                 cellpar=[3.75, 3.75, 3.75, 90, 90, 90]),
    "NiAl-B2": lambda: bulk("NiAl", "cesiumchloride", a=2.88) * (2, 2, 2),
    "Ti-hcp": lambda: bulk("Ti", "hcp", a=2.95, c=4.68) * (2, 2, 1),
    "Al-fcc": lambda: bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2),
    "C-graphite": lambda: crystal(["C", "C"], [(0, 0, 0.25), (1 / 3, 2 / 3, 0.25)], spacegroup=194,
                                  cellpar=[2.46, 2.46, 6.70, 90, 90, 120]),
    "CO2-molecular": lambda: crystal(["C", "O"], [(0, 0, 0), (0.1185, 0.1185, 0.1185)], spacegroup=205,
                                     cellpar=[5.624, 5.624, 5.624, 90, 90, 90]),
}
"""Name → builder of the unperturbed prototype, in set order."""


def crystal_set(seed: int = CRYSTAL_SEED, limit: int = 0) -> list[Atoms]:
    """The set's structures in :data:`PROTOTYPES` order (the first ``limit`` when > 0), rattled and strained.

    Each is named ``crystal-<prototype>``; ``info["kind"]`` is ``"crystal"`` and ``info["prototype"]`` the
    prototype's name."""
    out = []
    for k, (name, build) in enumerate(PROTOTYPES.items()):
        if limit and k >= limit:
            break
        rng = np.random.default_rng([seed, k])
        a = build()
        a = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
        a.positions = a.positions + rng.normal(scale=RATTLE, size=a.positions.shape)
        a = random_strain(a, STRAIN, rng)
        a.info.update(name=f"crystal-{name}", kind="crystal", prototype=name)
        out.append(a)
    return out


def check_calculator(calculator: str, option: str = "--calculator") -> None:
    """Refuse a calculator that declares it lacks an element of the set, naming those elements and what to use."""
    allowed = calculator_elements(calculator)
    if allowed is None:
        return
    needed = sorted({s for build in PROTOTYPES.values() for s in build().get_chemical_symbols()})
    missing = [s for s in needed if s not in allowed]
    if missing:
        use = f"use {option} chgnet" if option.startswith("--") else f"set {option} = 'chgnet'"
        raise CrystalsError(f"the crystals set needs a calculator that handles {', '.join(needed)}; {calculator!r} lacks "
                            f"{', '.join(missing)}: {use} (the mlip extra; CHGNet covers H–Pu)")
