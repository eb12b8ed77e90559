"""Structures to relax: generated EMT systems, files, the train/held-out split, the curriculum.

Sources
    * ``demo``: generated from a seed — compact random clusters of Cu, Ag, Au, Ni, Pd, Pt,
      Al (grown atom by atom next to the existing cluster, never closer than
      ``CurriculumConfig.min_distance``), rattled fcc bulk supercells and rattled fcc(111) /
      fcc(100) slabs. Mostly 3–8-atom clusters (the demo trains on those), some 9–16-atom
      systems, a few of 27–64 atoms.
    * a directory (or one file) of CIF (pymatgen, ASE as fallback), POSCAR/CONTCAR/*.vasp
      (ASE, pymatgen as fallback), xyz/extxyz and ASE .traj files (ASE). Every frame of a
      multi-frame file is a structure (``frames.extxyz#2``); other files in a directory are
      ignored. :func:`read_structure_file` is the one reader behind `relaxrl train`, `relax`
      (which needs ``--index`` for a multi-frame file) and `eval`.

Every structure is an ``ase.Atoms`` without calculator, named in ``atoms.info["name"]``
(``cluster-Cu6-s0-3``, ``bulk-Ni32-s0-60``, ``POSCAR_Cu``, ``frames.extxyz#2``). ASE
constraints of files are kept (FixAtoms from extxyz/traj, selective dynamics from POSCAR as
FixAtoms/FixScaled): ``RLOptimizer`` and ASE's optimizers honour them, the training env
ignores them. Bad input raises :class:`StructureError` naming the structure, the problem and
the fix: unreadable or truncated files, partial occupancies, two atoms on one site, elements
the calculator does not handle, atoms closer than ``min_distance_factor × (r_cov,i + r_cov,j)``.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, reference_states
from ase.neighborlist import neighbor_list

from actors.alfe import alfe_structures
from actors.calculators import calculator_elements
from actors.geometry import find_overlaps, perturb
from common.config import CurriculumConfig
from common.errors import RelaxRLError

__all__ = [
    "Curriculum",
    "StructureError",
    "check_structure",
    "demo_structures",
    "find_overlaps",
    "load_structures",
    "random_cluster",
    "rattled_bulk",
    "rattled_slab",
    "read_structure",
    "read_structure_file",
    "read_structure_source",
    "split_structures",
    "structure_files",
]

# File suffixes / name prefixes whose format the name tells (a directory contributes only these).
_CIF_SUFFIXES = (".cif",)
_VASP_SUFFIXES = (".vasp", ".poscar")
_VASP_PREFIXES = ("POSCAR", "CONTCAR")
_XYZ_SUFFIXES = (".xyz", ".extxyz")
_TRAJ_SUFFIXES = (".traj",)
SAME_SITE_TOL = 0.01
"""Atoms closer than this (Å) sit on one site: a duplicated atom, reported as such."""


class StructureError(RelaxRLError, ValueError):
    """A structure (file or generated) that cannot be relaxed as given."""


# ----------------------------------------------------------------------------- validation


def check_structure(atoms: Atoms, name: str | None = None, *, calculator: str = "emt",
                    min_distance_factor: float = 0.6, calculator_option: str = "env.calculator") -> None:
    """Raise :class:`StructureError` if ``atoms`` cannot be relaxed with ``calculator`` as given.

    ``calculator_option``: the setting the user chooses the calculator with, named in the
    advice (``env.calculator`` for `relaxrl train`, ``--calculator`` for `relax` and `eval`).
    """
    name = name or str(atoms.info.get("name", atoms.get_chemical_formula()))
    if len(atoms) == 0:
        raise StructureError(f"structure {name!r} has no atoms; remove it from the structure source")
    if not np.isfinite(atoms.positions).all():
        raise StructureError(f"structure {name!r} has non-finite coordinates; fix or remove the file")
    allowed = calculator_elements(calculator)
    if allowed is not None:
        unknown = sorted(set(atoms.get_chemical_symbols()) - allowed)
        if unknown:
            raise StructureError(
                f"structure {name!r} contains {', '.join(unknown)}, which the {calculator!r} calculator does not "
                f"handle (it supports {', '.join(sorted(allowed, key=lambda s: atomic_numbers[s]))}); remove the "
                f"structure or choose another calculator with {calculator_option}"
            )
    if any(atoms.pbc[k] and np.linalg.norm(atoms.cell[k]) < 1e-9 for k in range(3)):
        raise StructureError(f"structure {name!r} is periodic along an axis whose cell vector is zero; give it a cell")
    if len(atoms) > 1:
        i, j, d = neighbor_list("ijd", atoms, SAME_SITE_TOL, self_interaction=False)
        keep = i < j
        if keep.any():
            i, j, d = i[keep], j[keep], d[keep]
            sym = atoms.get_chemical_symbols()
            raise StructureError(
                f"structure {name!r} has two atoms on one site: atoms {i[0]} ({sym[i[0]]}) and {j[0]} ({sym[j[0]]}) "
                f"are {d[0]:.4f} Å apart ({len(i)} such pair(s)); remove the duplicate atom(s)"
            )
    overlaps = find_overlaps(atoms, min_distance_factor)
    if overlaps:
        i, j, d, lim = min(overlaps, key=lambda o: o[2] / o[3])
        sym = atoms.get_chemical_symbols()
        raise StructureError(
            f"structure {name!r}: atoms {i} ({sym[i]}) and {j} ({sym[j]}) overlap at {d:.3f} Å, closer than "
            f"{min_distance_factor} × covalent radii sum = {lim:.3f} Å ({len(overlaps)} such pair(s)); check the "
            "coordinates (Cartesian vs fractional, units) or lower env.min_distance_factor"
        )


def _clean(atoms: Atoms, name: str, kind: str) -> Atoms:
    """A plain copy: numbers, positions, cell, pbc and ASE constraints; name and kind in info."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if atoms.constraints:
        out.set_constraint(copy.deepcopy(atoms.constraints))
    out.info["name"] = name
    out.info["kind"] = kind
    return out


# ----------------------------------------------------------------------------- generation


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
    from ase.build import bulk

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
    from ase.build import fcc100, fcc111

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
    from ase.build import molecule

    atoms = molecule(name)
    atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    return atoms


def adsorbate_on_slab(metal: str, adsorbate: str, rng: np.random.Generator, facet: str = "111",
                      layers: int = 4, fixed_layers: int = 2, rattle: float = 0.08, site: str | None = None) -> Atoms:
    """A 2×2 fcc(111)/(100) slab of ``metal`` with ``adsorbate`` at ``site`` (a random one when None),
    rattled (Å); the bottom ``fixed_layers`` layers are fixed by ``FixAtoms`` (kept by RelaxEnv)."""
    from ase.build import add_adsorbate, fcc100, fcc111, molecule
    from ase.constraints import FixAtoms

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
            first = elements[int(rng.integers(len(elements)))]
            if rng.random() < 0.25 and len(elements) > 1:  # some binary alloys
                second = elements[int(rng.integers(len(elements)))]
                symbols = [first if rng.random() < 0.5 else second for _ in range(arg)]
            else:
                symbols = [first] * arg
            atoms = random_cluster(symbols, rng, cfg.min_distance)
        elif kind == "bulk":
            atoms = rattled_bulk(elements[int(rng.integers(len(elements)))], arg, rng, cfg.rattle)
        else:
            size, facet = arg
            atoms = rattled_slab(elements[int(rng.integers(len(elements)))], size, rng, cfg.rattle, facet)
        name = f"{kind}-{atoms.get_chemical_formula()}-s{seed}-{k}"
        out.append(_clean(atoms, name, kind))
    out += _extra_kinds(cfg, seed, len(out))
    return out


def _extra_kinds(cfg: CurriculumConfig, seed: int, start: int) -> list[Atoms]:
    """``curriculum.n_molecules`` rattled H/C/N/O molecules and ``curriculum.n_adsorbates``
    adsorbates on slabs with fixed bottom layers (metals from ``curriculum.elements``)."""
    out = []
    for j in range(cfg.n_molecules):
        k = start + j
        rng = np.random.default_rng([seed, k])
        atoms = rattled_molecule(TRAINING_MOLECULES[int(rng.integers(len(TRAINING_MOLECULES)))], rng)
        out.append(_clean(atoms, f"molecule-{atoms.get_chemical_formula()}-s{seed}-{k}", "molecule"))
    for j in range(cfg.n_adsorbates):
        k = start + cfg.n_molecules + j
        rng = np.random.default_rng([seed, k])
        metal = cfg.elements[int(rng.integers(len(cfg.elements)))]
        atoms = adsorbate_on_slab(metal, ADSORBATES[int(rng.integers(len(ADSORBATES)))], rng,
                                  facet=("111", "100")[int(rng.integers(2))])
        clean = _clean(atoms, f"adsorbate-{atoms.get_chemical_formula()}-s{seed}-{k}", "adsorbate")
        clean.set_constraint(atoms.constraints)
        out.append(clean)
    return out


def split_structures(structures: Sequence[Atoms], heldout_fraction: float, seed: int) -> tuple[list[Atoms], list[Atoms]]:
    """Deterministic train / held-out split, stratified by kind and size bucket.

    Within each group (kind, atom-count bucket ≤8, ≤16, ≤32, larger) a seeded permutation
    holds out ``round(fraction × group size)`` structures, so the held-out set spans sizes.
    Input order is kept in both outputs.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise StructureError(f"curriculum.heldout_fraction must be in [0, 1), got {heldout_fraction}")
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
    """Generated structures for ``cfg`` and ``seed``, split into (train, held-out)."""
    return split_structures(generate_demo(cfg, seed), cfg.heldout_fraction, seed)


# ----------------------------------------------------------------------------- files


def _file_format(path: Path) -> str | None:
    """'cif', 'vasp', 'extxyz' or 'traj' from a file's name; None when the name does not say (ASE guesses)."""
    suffix = path.suffix.lower()
    if suffix in _CIF_SUFFIXES:
        return "cif"
    if suffix in _VASP_SUFFIXES or path.name.startswith(_VASP_PREFIXES):
        return "vasp"
    if suffix in _XYZ_SUFFIXES:
        return "extxyz"
    if suffix in _TRAJ_SUFFIXES:
        return "traj"
    return None


def _is_structure_file(path: Path) -> bool:
    """Whether a structure directory contributes this file (known suffix or POSCAR/CONTCAR name, not hidden)."""
    return not path.name.startswith(".") and _file_format(path) is not None


def structure_files(directory: str | Path) -> list[Path]:
    """The structure files of a directory, sorted by name (other files are ignored)."""
    d = Path(directory)
    return sorted(p for p in d.iterdir() if p.is_file() and _is_structure_file(p))


def _read_pymatgen(path: Path) -> list[Atoms]:
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_file(str(path))
    if not structure.is_ordered:
        raise StructureError(f"structure file {path} has partial occupancies (a disordered structure); relaxrl relaxes "
                             "ordered structures only: order it first (a supercell with explicit sites, e.g. pymatgen's "
                             "OrderDisorderedStructureTransformation) and pass that file")
    return [AseAtomsAdaptor.get_atoms(structure)]


def _read_ase(path: Path, fmt: str | None) -> list[Atoms]:
    from ase.io import read

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = read(str(path), index=":", format=fmt)
    return list(frames) if isinstance(frames, list) else [frames]


def _poscar_problem(text: str) -> str | None:
    """Why a POSCAR text is incomplete (coordinate lines missing or cut short), or None.

    Readers are lenient with a truncated last line (ASE repeats a lone number three
    times), so the coordinate block is checked before any reader sees the file.
    """
    lines = text.splitlines()

    def ints(line: str) -> list[int] | None:
        try:
            return [int(tok) for tok in line.split()]
        except ValueError:
            return None

    k = 5  # after comment, scale and three lattice lines
    if len(lines) <= k:
        return f"only {len(lines)} lines, the header alone needs at least 7"
    if not ints(lines[k]):  # VASP 5: a species line comes first
        k += 1
    counts = ints(lines[k]) if k < len(lines) else None
    if not counts:
        return "the atom counts line is missing or not a list of integers"
    k += 1
    if k < len(lines) and lines[k].strip()[:1] in ("s", "S"):
        k += 1  # Selective dynamics
    if k >= len(lines) or lines[k].strip()[:1] not in ("c", "C", "k", "K", "d", "D"):
        return "no 'Direct' or 'Cartesian' line after the atom counts"
    n_atoms = sum(counts)
    coords = lines[k + 1:k + 1 + n_atoms]
    if len(coords) < n_atoms:
        return f"{n_atoms} atoms declared but only {len(coords)} coordinate lines"
    for m, row in enumerate(coords):
        toks = row.split()[:3]
        try:
            if len(toks) < 3:
                raise ValueError
            [float(tok) for tok in toks]
        except ValueError:
            return f"coordinate line {m + 1} ({row.strip()!r}) is not three numbers"
    return None


def _cif_site_problem(path: Path) -> str | None:
    """Two atoms listed on one site, or partial occupancies, in a CIF's atom-site loop; None when neither.

    Checked on the listed sites before any reader runs: pymatgen refuses such files with an
    unrelated message and ASE merges the atoms of one site into one, so afterwards the file
    would look truncated (two atoms on one site) or be relaxed as an ordered cell (partial
    occupancies). Sites generated by symmetry are not compared; the overlap check sees those.
    An unparsable CIF returns None: the readers report it.
    """
    try:
        from ase.io.cif import parse_cif

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            block = next((b for b in parse_cif(str(path)) if b.has_structure()), None)
            if block is None:
                return None
            frac = np.array([[float(v) for v in block.get(f"_atom_site_fract_{k}")] for k in "xyz"]).T  # [n_sites, 3]
            symbols = list(block.get_symbols())
        labels = [str(x) for x in (block.get("_atom_site_label") or symbols)]
        occupancy = block.get("_atom_site_occupancy")
        occ = np.ones(len(frac)) if occupancy is None else np.array([float(v) for v in occupancy])
        if not (len(symbols) == len(labels) == len(occ) == len(frac)):
            return None
    except Exception:  # not parsable here: the readers give the error
        return None
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, key in enumerate(np.round(np.mod(frac, 1.0) * 1000).astype(int) % 1000):
        groups.setdefault(tuple(int(x) for x in key), []).append(k)

    def sites(idx: list[int]) -> str:
        return " + ".join(f"{labels[i]} ({symbols[i]}, occupancy {occ[i]:g})" for i in idx)

    shared = [idx for idx in groups.values() if len(idx) > 1 and occ[idx].sum() > 1 + 1e-3]
    if shared:
        x, y, z = frac[shared[0][0]]
        more = f" ({len(shared)} such sites)" if len(shared) > 1 else ""
        return (f"structure file {path} has two atoms on one site: {sites(shared[0])} at fractional "
                f"({x:g}, {y:g}, {z:g}){more}; remove the duplicate atom(s) from the file")
    partial = [idx for idx in groups.values() if (occ[idx] < 1 - 1e-3).any()]
    if partial:
        more = f" and {len(partial) - 1} more site(s)" if len(partial) > 1 else ""
        return (f"structure file {path} has partial occupancies (site {sites(partial[0])}{more}); relaxrl relaxes "
                "ordered structures only: order it first (a supercell with explicit sites, e.g. pymatgen's "
                "OrderDisorderedStructureTransformation) and pass that file")
    return None


def _cif_problem(text: str, atoms: Atoms) -> str | None:
    """A mismatch between ``_chemical_formula_sum`` and the atoms read (a truncated atom loop), or None."""
    import re

    match = re.search(r"^_chemical_formula_sum\s+['\"]?([^'\"\n]+)", text, flags=re.MULTILINE)
    if not match:
        return None
    from pymatgen.core import Composition

    try:
        declared = Composition(match.group(1).strip())
    except Exception:  # an unparsable formula is not our concern here
        return None
    read = Composition(atoms.get_chemical_formula())
    if set(declared) != set(read):
        return f"_chemical_formula_sum is {match.group(1).strip()!r} but the atoms read are {read.formula!r}"
    ratios = {read[el] / declared[el] for el in declared}
    k = ratios.pop() if len(ratios) == 1 else None
    if k is None or abs(k - round(k)) > 1e-6 or round(k) < 1:
        return f"_chemical_formula_sum is {match.group(1).strip()!r} but the atoms read are {read.formula!r}"
    return None


def _read_frames(path: Path) -> list[Atoms]:
    """Every frame of a structure file as the readers give it (with constraints), after the format's own checks."""
    if path.is_dir():
        raise StructureError(f"structure file {path} is a directory; pass one structure file")
    if not path.is_file():
        raise StructureError(f"structure file {path} does not exist")
    fmt = _file_format(path)
    if fmt == "vasp":
        problem = _poscar_problem(path.read_text(errors="replace"))
        if problem:
            raise StructureError(f"structure file {path} is not a complete VASP POSCAR: {problem}; "
                                 "check that it is not truncated, or remove it")
        # ASE first: it turns selective dynamics into FixAtoms / FixScaled (pymatgen's FixCartesian is wrong for skewed cells)
        readers = [("ase", lambda: _read_ase(path, "vasp")), ("pymatgen", lambda: _read_pymatgen(path))]
        expected = "a complete VASP POSCAR file"
    elif fmt == "cif":
        problem = _cif_site_problem(path)
        if problem:
            raise StructureError(problem)
        readers = [("pymatgen", lambda: _read_pymatgen(path)), ("ase", lambda: _read_ase(path, "cif"))]
        expected = "a complete CIF file"
    elif fmt in ("extxyz", "traj"):
        readers = [("ase", lambda: _read_ase(path, fmt))]
        expected = "an extended XYZ file" if fmt == "extxyz" else "an ASE trajectory"
    else:
        readers = [("ase", lambda: _read_ase(path, None)), ("pymatgen", lambda: _read_pymatgen(path))]
        expected = ("in a format ASE or pymatgen reads (the name does not say which; .cif, POSCAR/CONTCAR/.vasp, "
                    ".xyz/.extxyz and .traj are known)")
    errors: list[str] = []
    frames: list[Atoms] = []
    for reader_name, reader in readers:
        try:
            frames = reader()
        except StructureError:
            raise
        except Exception as e:  # readers raise many types on bad input; report them all
            errors.append(f"{reader_name}: {type(e).__name__}: {str(e).strip()[:200]}")
            continue
        if frames and all(len(a) > 0 for a in frames):
            break
        errors.append(f"{reader_name}: no atoms read")
        frames = []
    if not frames:
        raise StructureError(
            f"structure file {path} cannot be read ({'; '.join(errors)}); it should be {expected} — check that it "
            "is not truncated or malformed, or remove it"
        )
    if fmt == "cif":
        problem = _cif_problem(path.read_text(errors="replace"), frames[0])
        if problem:
            raise StructureError(f"structure file {path} looks truncated or inconsistent: {problem}; "
                                 "re-export the complete CIF or remove it")
    return frames


def _validated(path: Path, frames: list[Atoms], picked: Sequence[int], calculator: str,
               min_distance_factor: float, calculator_option: str = "env.calculator") -> list[Atoms]:
    out = []
    for k in picked:
        name = path.name if len(frames) == 1 else f"{path.name}#{k}"
        atoms = _clean(frames[k], name, "file")
        label = name if str(path) == name else f"{name} ({path})"
        check_structure(atoms, label, calculator=calculator, min_distance_factor=min_distance_factor,
                        calculator_option=calculator_option)
        out.append(atoms)
    return out


def _frame_index(path: Path, n: int, index: int) -> int:
    """Frame ``index`` of ``n`` as a non-negative index (negative counts from the end, as in ase.io.read)."""
    if not -n <= int(index) < n:
        raise StructureError(f"structure file {path} holds {n} frame(s); index {index} is out of range "
                             f"(use 0 … {n - 1}, or -1 … -{n} counting from the end)")
    return int(index) % n


def read_structure_file(path: str | Path, *, index: int | None = None, calculator: str = "emt",
                        min_distance_factor: float = 0.6, calculator_option: str = "env.calculator") -> list[Atoms]:
    """Read and validate the structures of one file: every frame, or only frame ``index``.

    The one structure reader of `relaxrl train`, `relax` and `eval`. Formats: CIF (pymatgen,
    then ASE), POSCAR/CONTCAR/*.vasp (ASE, then pymatgen), xyz/extxyz and ASE trajectories
    (ASE), any other name through ASE's format guess, then pymatgen. Every frame of a
    multi-frame file is a structure, named ``file#frame``; ``index`` picks one frame as in
    ``ase.io.read`` (negative counts from the end). ASE constraints are kept: FixAtoms from
    extxyz/traj, selective dynamics from POSCAR as FixAtoms/FixScaled. Raises
    :class:`StructureError` naming the file: missing, unreadable or truncated files, partial
    occupancies, two atoms on one site, elements the calculator does not handle, overlapping
    atoms, an index out of range. ``calculator_option`` as in :func:`check_structure`.
    """
    path = Path(path)
    frames = _read_frames(path)
    picked = list(range(len(frames))) if index is None else [_frame_index(path, len(frames), index)]
    return _validated(path, frames, picked, calculator, min_distance_factor, calculator_option)


def read_structure(path: str | Path, *, index: int | None = None, calculator: str = "emt",
                   min_distance_factor: float = 0.6, calculator_option: str = "env.calculator") -> Atoms:
    """Exactly one validated structure from a file (see :func:`read_structure_file`).

    A file with several frames needs ``index``: it is refused rather than relaxing one frame
    the caller did not choose.
    """
    path = Path(path)
    frames = _read_frames(path)
    n = len(frames)
    if index is None and n > 1:
        raise StructureError(f"structure file {path} holds {n} frames (structures); choose one with --index N "
                             f"(0 … {n - 1}, or -1 for the last), or write the frame you want to its own file")
    k = _frame_index(path, n, 0 if index is None else index)
    return _validated(path, frames, [k], calculator, min_distance_factor, calculator_option)[0]


def read_structure_source(source: str | Path, *, calculator: str = "emt", min_distance_factor: float = 0.6,
                          limit: int = 0, calculator_option: str = "env.calculator") -> list[Atoms]:
    """Every structure of a directory of structure files, or of one file (every frame of multi-frame files).

    A directory contributes its .cif, POSCAR*/CONTCAR*/.vasp/.poscar, .xyz/.extxyz and .traj
    files, sorted by name; other files are ignored. ``limit`` > 0 stops after that many structures.
    """
    path = Path(source)
    if path.is_dir():
        files = structure_files(path)
        if not files:
            raise StructureError(
                f"structure directory {path} has no .cif, POSCAR/CONTCAR/.vasp, .xyz/.extxyz or .traj files; "
                "add some or point to another directory"
            )
    elif path.is_file():
        files = [path]
    else:
        raise StructureError(f"structure source {str(source)!r} is not an existing directory or file")
    structures: list[Atoms] = []
    for f in files:
        structures += read_structure_file(f, calculator=calculator, min_distance_factor=min_distance_factor,
                                          calculator_option=calculator_option)
        if limit and len(structures) >= limit:
            return structures[:limit]
    return structures


def load_structures(source: str | Path, cfg: CurriculumConfig, seed: int, *, calculator: str = "emt",
                    min_distance_factor: float = 0.6, calculator_kwargs: dict | None = None) -> tuple[list[Atoms], list[Atoms]]:
    """(train, held-out) from ``'demo'``, ``'alfe'`` (actors/alfe.py), a directory of structure files, or one file."""
    if str(source) == "demo":
        return demo_structures(cfg, seed)
    if str(source) == "alfe":  # Al–Fe minima relaxed under the configured calculator (cached on disk)
        return alfe_structures(cfg, seed, calculator, calculator_kwargs, min_distance_factor)
    if not Path(source).exists():
        raise StructureError(f"structure source {str(source)!r} is neither 'demo', 'alfe' nor an existing directory or file")
    structures = read_structure_source(source, calculator=calculator, min_distance_factor=min_distance_factor)
    return split_structures(structures, cfg.heldout_fraction, seed)


# ----------------------------------------------------------------------------- curriculum


class Curriculum:
    """Stages by atom count, unlocked by t_total or by the recent success rate.

    Stage ``k`` samples uniformly from every training structure with at most
    ``stages[k]`` atoms (so small structures keep coming). The next stage unlocks when
    ``unlock_t_total`` environment steps have passed since the current stage began
    (``unlock_t_total = 0`` disables this) or when the success rate over the last
    ``success_window`` episodes of the current stage reaches ``unlock_success``.
    Structures larger than the last stage are never sampled (see ``excluded``).
    """

    def __init__(self, structures: Sequence[Atoms], cfg: CurriculumConfig, t_total: int = 0):
        if not structures:
            raise StructureError("the curriculum got no training structures; check curriculum.source")
        stages = tuple(int(s) for s in cfg.stages)
        if not stages or list(stages) != sorted(stages):
            raise StructureError(f"curriculum.stages must be a non-empty increasing list of atom counts, got {list(stages)}")
        self.cfg = cfg
        self.stages = stages
        self._pools = [[a for a in structures if len(a) <= m] for m in stages]
        if not self._pools[0]:
            smallest = min(len(a) for a in structures)
            raise StructureError(
                f"no training structure has at most {stages[0]} atoms (the smallest has {smallest}); lower "
                "the first entry of curriculum.stages or add smaller structures"
            )
        self.excluded = [str(a.info.get("name", "")) for a in structures if len(a) > stages[-1]]
        self.stage = 0
        self._stage_start = int(t_total)
        self._window: deque[bool] = deque(maxlen=max(1, cfg.success_window))

    @property
    def max_atoms(self) -> int:
        """Largest atom count of the active stage."""
        return self.stages[self.stage]

    @property
    def pool(self) -> list[Atoms]:
        """Structures the active stage samples from (do not modify them)."""
        return self._pools[self.stage]

    @property
    def success_rate(self) -> float:
        """Success rate over the current stage's recent episodes (0 when none)."""
        return sum(self._window) / len(self._window) if self._window else 0.0

    def sample(self, rng: np.random.Generator) -> Atoms:
        """A copy of a random structure of the active stage."""
        atoms = self.pool[int(rng.integers(len(self.pool)))]
        if atoms.info.get("perturb"):  # a minimum (source 'alfe'): displaced anew for every episode
            return perturb(atoms, float(atoms.info["perturb"]), rng)
        return atoms.copy()

    def report(self, t_total: int, success: bool | None) -> bool:
        """Record one finished episode at ``t_total``; returns True when a new stage unlocked.

        ``success=None`` (e.g. an expert episode) only advances the t_total clock and does
        not enter the success window.
        """
        if success is not None:
            self._window.append(bool(success))
        if self.stage + 1 >= len(self.stages):
            return False
        by_steps = self.cfg.unlock_t_total > 0 and t_total - self._stage_start >= self.cfg.unlock_t_total
        by_success = (len(self._window) == self._window.maxlen and self.success_rate >= self.cfg.unlock_success)
        if by_steps or by_success:
            self.stage += 1
            self._stage_start = int(t_total)
            self._window.clear()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Progress to store in a checkpoint."""
        return {"stage": self.stage, "stage_start": self._stage_start, "window": list(self._window)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.stage = min(int(state["stage"]), len(self.stages) - 1)
        self._stage_start = int(state["stage_start"])
        self._window.clear()
        self._window.extend(bool(x) for x in state["window"])
