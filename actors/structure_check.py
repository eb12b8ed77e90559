"""Whether a structure can be relaxed as given: :func:`check_structure` and :class:`StructureError`.

The structure-file readers check every structure they read, and the environment checks every
structure at ``reset`` (generated ones too). Bad input raises :class:`StructureError` naming
the structure, the problem and the fix: no atoms, non-finite coordinates, elements the
calculator does not handle, a periodic axis without a cell vector, a (nearly) singular cell, a
volume per atom no real structure has, a cell too thin or skewed for a bounded neighbour search
(``actors.geometry.cell_problem``; checked before any search), two atoms on one site, atoms closer
than ``min_distance_factor × (r_cov,i + r_cov,j)``, and atoms none of which has a neighbour within
8 Å (``actors.geometry.isolation_problem``: coordinates in pm read as Å).

The generated and the file sources hand on plain ``ase.Atoms`` without calculator, named in
``atoms.info["name"]`` and with their kind in ``atoms.info["kind"]`` (:func:`named_copy`), ASE
constraints kept.
"""
from __future__ import annotations

import copy

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list

from actors.calculators import calculator_elements
from actors.geometry import cell_problem, find_overlaps, isolation_problem
from common.errors import RelaxRLError

__all__ = ["OVERLAP_ADVICE", "SAME_SITE_TOL", "StructureError", "check_structure", "named_copy", "policy_overlap_advice"]

SAME_SITE_TOL = 0.01
"""Atoms closer than this (Å) sit on one site: a duplicated atom, reported as such."""


class StructureError(RelaxRLError, ValueError):
    """A structure (file or generated) that cannot be relaxed as given."""


OVERLAP_ADVICE = "lower env.min_distance_factor"
"""What the overlap error advises when the structure is right (``train`` and ``eval --set``)."""


def policy_overlap_advice(min_distance_factor: float) -> str:
    """What the overlap error advises where a trained policy relaxes the structure (`relax`, ``RLOptimizer``): the
    checkpoint's ``env.min_distance_factor`` is part of what it learned, so only another checkpoint lowers it."""
    return (f"use a checkpoint trained with a lower env.min_distance_factor (this one keeps every pair at least "
            f"{min_distance_factor} × the radii sum apart, so its policy cannot start closer)")


def check_structure(atoms: Atoms, name: str | None = None, *, calculator: str | Calculator | None = "emt",
                    min_distance_factor: float = 0.6, calculator_option: str = "env.calculator",
                    overlap_advice: str = OVERLAP_ADVICE) -> None:
    """Raise :class:`StructureError` if ``atoms`` cannot be relaxed with ``calculator`` as given.

    ``calculator``: its name, or the calculator itself (``RLOptimizer`` checks ``atoms.calc``; None = elements
    unchecked); ``calculator_option``: the setting the user chooses the calculator with, named in the
    advice (``env.calculator`` for `relaxrl train`, ``--calculator`` for `relax` and `eval`);
    ``overlap_advice``: what else to do about overlapping atoms in the command at hand.
    """
    name = name or str(atoms.info.get("name", atoms.get_chemical_formula()))
    if len(atoms) == 0:
        raise StructureError(f"structure {name!r} has no atoms; remove it from the structure source")
    if not np.isfinite(atoms.positions).all():
        raise StructureError(f"structure {name!r} has non-finite coordinates (NaN or inf); fix its positions (or the "
                             "file it came from) or remove it")
    allowed = None if calculator is None else calculator_elements(calculator)
    if allowed is not None:
        label = calculator if isinstance(calculator, str) else type(calculator).__name__
        unknown = sorted(set(atoms.get_chemical_symbols()) - allowed)
        if unknown:
            raise StructureError(
                f"structure {name!r} contains {', '.join(unknown)}, which the {label!r} calculator does not "
                f"handle (it supports {', '.join(sorted(allowed, key=lambda s: atomic_numbers[s]))}); remove the "
                f"structure or choose another calculator with {calculator_option}"
            )
    if any(atoms.pbc[k] and np.linalg.norm(atoms.cell[k]) < 1e-9 for k in range(3)):
        raise StructureError(f"structure {name!r} is periodic along an axis whose cell vector is zero; give it a cell")
    problem = cell_problem(atoms)  # before any neighbour search: each is bounded by the cell's geometry
    if problem:
        raise StructureError(f"structure {name!r}: {problem}")
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
            f"coordinates (Cartesian vs fractional, units) or {overlap_advice}"
        )
    problem = isolation_problem(atoms)
    if problem:
        raise StructureError(f"structure {name!r}: {problem}")


def named_copy(atoms: Atoms, name: str, kind: str) -> Atoms:
    """A plain copy: numbers, positions, cell, pbc and ASE constraints; name and kind in info."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if atoms.constraints:
        out.set_constraint(copy.deepcopy(atoms.constraints))
    out.info["name"] = name
    out.info["kind"] = kind
    return out
