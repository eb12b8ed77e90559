"""`relaxrl relax INPUT --checkpoint CKPT`: relax one structure with a trained policy.

    relaxrl relax POSCAR --checkpoint runs/demo-.../ --fmax 0.05 --steps 200 --out relaxed.cif \
        [--trajectory relax.traj] [--hybrid 10]

Reads any format ASE or pymatgen reads (CIF, POSCAR/CONTCAR, extxyz through
``actors.structures``; anything else through ``ase.io.read`` and then pymatgen), checks it
(elements the calculator handles, no overlapping atoms), relaxes it with
:class:`~relaxrl.optimizer.RLOptimizer`, prints one summary line and writes the relaxed
structure (format from the ``--out`` suffix). Exit status 0 whether or not it converged
(the line says which); 2 with one clear line for bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ase import Atoms

from common.errors import RelaxRLError


class RelaxError(RelaxRLError):
    """Bad arguments to `relaxrl relax` (unwritable output, bad settings)."""


def read_structures(path: str | Path, *, calculator: str = "emt", min_distance_factor: float = 0.6) -> list[Atoms]:
    """Every structure in a file, validated for ``calculator``; named ``atoms.info['name']``.

    Known suffixes go through :func:`actors.structures.read_structure_file`; other files are
    tried with ``ase.io.read`` (format guessed) and then pymatgen.
    """
    from actors.structures import StructureError, _is_structure_file, check_structure, read_structure_file

    p = Path(path)
    if not p.is_file():
        raise StructureError(f"structure file {p} does not exist")
    if _is_structure_file(p):
        return read_structure_file(p, calculator=calculator, min_distance_factor=min_distance_factor)
    errors = []
    frames: list[Atoms] = []
    try:
        from ase.io import read

        got = read(str(p), index=":")
        frames = list(got) if isinstance(got, list) else [got]
    except Exception as e:  # ASE's readers raise many types on unknown formats
        errors.append(f"ase: {type(e).__name__}: {str(e).strip()[:160]}")
    if not frames:
        try:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                frames = [AseAtomsAdaptor.get_atoms(Structure.from_file(str(p)))]
        except Exception as e:
            errors.append(f"pymatgen: {type(e).__name__}: {str(e).strip()[:160]}")
    frames = [a for a in frames if len(a)]
    if not frames:
        raise StructureError(f"structure file {p} cannot be read by ASE or pymatgen ({'; '.join(errors) or 'no atoms'}); "
                             "use CIF, POSCAR or extxyz, or check that the file is complete")
    out = []
    for k, atoms in enumerate(frames):
        name = p.name if len(frames) == 1 else f"{p.name}#{k}"
        clean = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        clean.info["name"] = name
        check_structure(clean, f"{name} ({p})", calculator=calculator, min_distance_factor=min_distance_factor)
        out.append(clean)
    return out


def read_structure(path: str | Path, *, calculator: str = "emt", min_distance_factor: float = 0.6) -> Atoms:
    """The last structure of a file (as ``ase.io.read`` picks), validated; see :func:`read_structures`."""
    return read_structures(path, calculator=calculator, min_distance_factor=min_distance_factor)[-1]


def summary_line(name: str, s: dict[str, Any]) -> str:
    """One line: converged or not, steps (per part in hybrid mode), force calls, final Fmax, energy change."""
    status = "converged" if s["converged"] else "NOT converged"
    steps = f"{s['steps']} steps"
    if s["mode"] == "hybrid":
        steps += f" (rl {s['steps_rl']} + bfgs {s['steps_bfgs']})" if s["steps_bfgs"] or s["finished_by"] == "bfgs" \
            else f" (rl {s['steps_rl']}, no hand-over)"
    return (f"{name}: {status} in {steps}, {s['force_calls']} force calls, final Fmax {s['fmax']:.4f} eV/Å "
            f"(target {s['fmax_target']}), energy change {s['energy_change']:+.4f} eV "
            f"({s['energy_initial']:.4f} → {s['energy_final']:.4f} eV)")


def relax_command(args: argparse.Namespace) -> int:
    """Relax ``args.input`` with the policy of ``args.checkpoint``; print the summary; write ``args.out``."""
    from ase.io import write

    from actors.env import make_calculator
    from learner.policy import load_policy
    from relaxrl.optimizer import CountingCalculator, RLOptimizer

    if not args.fmax > 0 or args.steps < 0 or args.hybrid < 0:
        raise RelaxError(f"need --fmax > 0, --steps >= 0 and --hybrid >= 0; got {args.fmax}, {args.steps}, {args.hybrid}")
    policy = load_policy(args.checkpoint)  # first: a bad checkpoint is reported before any work
    env = policy.config.env
    kwargs = env.calculator_kwargs if args.calculator == env.calculator else {}
    calc = CountingCalculator(make_calculator(args.calculator, kwargs))
    atoms = read_structure(args.input, calculator=args.calculator, min_distance_factor=env.min_distance_factor)
    name = str(atoms.info.get("name", Path(args.input).name))
    out = Path(args.out)
    if not out.parent.is_dir():
        raise RelaxError(f"--out {out}: directory {out.parent} does not exist")
    atoms.calc = calc
    opt = RLOptimizer(atoms, policy=policy, logfile=None, trajectory=args.trajectory, hybrid_patience=args.hybrid)
    opt.run(fmax=args.fmax, steps=args.steps)
    s = opt.summary()
    s["force_calls"] = calc.calls  # every calculation, counted at the calculator
    print(summary_line(name, s))
    result = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    try:
        write(str(out), result)
    except Exception as e:  # ASE's writers raise many types for unknown formats or unwritable paths
        raise RelaxError(f"cannot write --out {out} ({type(e).__name__}: {e}); use a suffix such as .cif, .xyz, .extxyz "
                         "or .traj, or a name like POSCAR") from None
    print(f"wrote {out}" + (f" and {args.trajectory}" if args.trajectory else ""), file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(s))
    return 0
