"""Structure files: CIF, POSCAR/CONTCAR, xyz/extxyz and ASE trajectories, read and validated.

A directory (or one file) of CIF (pymatgen, ASE as fallback), POSCAR/CONTCAR/*.vasp (ASE,
pymatgen as fallback), xyz/extxyz and ASE .traj files (ASE). Every frame of a multi-frame
file is a structure (``frames.extxyz#2``); other files in a directory are ignored.
:func:`read_structure_file` is the one reader behind `relaxrl train`, `relax` (which needs
``--index`` for a multi-frame file, :func:`read_structure`) and `eval`.

ASE constraints of files are kept (FixAtoms from extxyz/traj, selective dynamics from POSCAR
as FixAtoms/FixScaled): the training environment, ``RLOptimizer`` and ASE's optimizers honour
them. Every structure read passes :func:`~actors.structure_check.check_structure`; problems of
the file itself raise :class:`~actors.structure_check.StructureError` naming the file, the
problem and the fix: missing, unreadable or truncated files, partial occupancies, two atoms
on one site.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read
from ase.io.cif import parse_cif

from actors.structure_check import OVERLAP_ADVICE, StructureError, check_structure, named_copy

__all__ = ["read_structure", "read_structure_file", "read_structure_source", "structure_files"]

# File suffixes / name prefixes whose format the name tells (a directory contributes only these).
_CIF_SUFFIXES = (".cif",)
_VASP_SUFFIXES = (".vasp", ".poscar")
_VASP_PREFIXES = ("POSCAR", "CONTCAR")
_XYZ_SUFFIXES = (".xyz", ".extxyz")
_TRAJ_SUFFIXES = (".traj",)


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


PYMATGEN_UNSAFE_FORMATS = ("json", "yaml")
"""pymatgen formats that are serialised Python objects: their site properties are decoded by monty, which
imports any module a '@module' key names. Structure files are data someone may send; they are not read so."""


def _read_pymatgen(path: Path) -> list[Atoms]:
    # pymatgen (about 0.3 s to import) only for the files it reads: ASE reads the common formats
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from pymatgen.io.registry import get_structure_format

    try:
        fmt = get_structure_format(filename=str(path)).name.lower()
    except ValueError:  # pymatgen does not know the name: Structure.from_file says so below
        fmt = ""
    if fmt in PYMATGEN_UNSAFE_FORMATS:
        raise StructureError(f"structure file {path} is pymatgen {fmt.upper()}, which names Python classes that "
                             "reading it would import (code from a data file); relaxrl does not read it: convert it "
                             "to CIF, POSCAR or extxyz where you trust it, and pass that file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_file(str(path))
    if not structure.is_ordered:
        raise StructureError(f"structure file {path} has partial occupancies (a disordered structure); relaxrl relaxes "
                             "ordered structures only: order it first (a supercell with explicit sites, e.g. pymatgen's "
                             "OrderDisorderedStructureTransformation) and pass that file")
    return [AseAtomsAdaptor.get_atoms(structure)]


def _read_ase(path: Path, fmt: str | None) -> list[Atoms]:
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
    match = re.search(r"^_chemical_formula_sum\s+['\"]?([^'\"\n]+)", text, flags=re.MULTILINE)
    if not match:
        return None
    from pymatgen.core import Composition  # pymatgen (about 0.3 s) only for a CIF that states its formula

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
               min_distance_factor: float, calculator_option: str = "env.calculator",
               overlap_advice: str = OVERLAP_ADVICE) -> list[Atoms]:
    out = []
    for k in picked:
        name = path.name if len(frames) == 1 else f"{path.name}#{k}"
        atoms = named_copy(frames[k], name, "file")
        label = name if str(path) == name else f"{name} ({path})"
        check_structure(atoms, label, calculator=calculator, min_distance_factor=min_distance_factor,
                        calculator_option=calculator_option, overlap_advice=overlap_advice)
        out.append(atoms)
    return out


def _frame_index(path: Path, n: int, index: int) -> int:
    """Frame ``index`` of ``n`` as a non-negative index (negative counts from the end, as in ase.io.read)."""
    if not -n <= int(index) < n:
        raise StructureError(f"structure file {path} holds {n} frame(s); index {index} is out of range "
                             f"(use 0 … {n - 1}, or -1 … -{n} counting from the end)")
    return int(index) % n


def read_structure_file(path: str | Path, *, index: int | None = None, calculator: str = "emt",
                        min_distance_factor: float = 0.6, calculator_option: str = "env.calculator",
                        overlap_advice: str = OVERLAP_ADVICE) -> list[Atoms]:
    """Read and validate the structures of one file: every frame, or only frame ``index``.

    The one structure reader of `relaxrl train`, `relax` and `eval`. Formats: CIF (pymatgen,
    then ASE), POSCAR/CONTCAR/*.vasp (ASE, then pymatgen), xyz/extxyz and ASE trajectories
    (ASE), any other name through ASE's format guess, then pymatgen. Every frame of a
    multi-frame file is a structure, named ``file#frame``; ``index`` picks one frame as in
    ``ase.io.read`` (negative counts from the end). ASE constraints are kept: FixAtoms from
    extxyz/traj, selective dynamics from POSCAR as FixAtoms/FixScaled. Raises
    :class:`StructureError` naming the file: missing, unreadable or truncated files, partial
    occupancies, two atoms on one site, elements the calculator does not handle, overlapping
    atoms, an index out of range. ``calculator_option`` and ``overlap_advice`` as in :func:`check_structure`.
    """
    path = Path(path)
    frames = _read_frames(path)
    picked = list(range(len(frames))) if index is None else [_frame_index(path, len(frames), index)]
    return _validated(path, frames, picked, calculator, min_distance_factor, calculator_option, overlap_advice)


def read_structure(path: str | Path, *, index: int | None = None, calculator: str = "emt",
                   min_distance_factor: float = 0.6, calculator_option: str = "env.calculator",
                   overlap_advice: str = OVERLAP_ADVICE) -> Atoms:
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
    return _validated(path, frames, [k], calculator, min_distance_factor, calculator_option, overlap_advice)[0]


def read_structure_source(source: str | Path, *, calculator: str = "emt", min_distance_factor: float = 0.6,
                          limit: int = 0, calculator_option: str = "env.calculator",
                          overlap_advice: str = OVERLAP_ADVICE) -> list[Atoms]:
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
                                          calculator_option=calculator_option, overlap_advice=overlap_advice)
        if limit and len(structures) >= limit:
            return structures[:limit]
    return structures
