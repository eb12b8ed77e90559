"""`relaxrl relax INPUT --checkpoint CKPT`: relax one structure with a trained policy.

    relaxrl relax POSCAR --checkpoint runs/demo-.../ --fmax 0.05 --steps 200 --out CONTCAR \
        [--index N] [--trajectory relax.traj] [--hybrid 10] [--relax-cell]

Reads the structure with :func:`actors.structure_files.read_structure` (CIF, POSCAR/CONTCAR,
extxyz, ASE trajectories, anything else ASE or pymatgen reads), checks it (elements the
calculator handles, no overlapping atoms, no partial occupancies), relaxes it with
:class:`~relaxrl.optimizer.RLOptimizer`, prints one summary line and writes the relaxed
structure (format from the ``--out`` suffix).

* A file with several frames needs ``--index N`` (as ``ase.io.read``: 0 is the first,
  -1 the last); without it the file is refused rather than relaxing a frame nobody chose.
* ASE constraints are kept: atoms fixed in the input (FixAtoms in extxyz/traj, selective
  dynamics in a POSCAR) do not move, and the written file keeps the constraint when its
  format can hold it (POSCAR/.vasp, extxyz, .traj; a CIF cannot, which is said on stderr).
* Everything that can be checked is checked before the relaxation: the settings, the
  checkpoint, the calculator, the structure, and that ``--out`` and ``--trajectory`` can be
  written (an existing directory, a name whose format ASE can write and read back, a writable
  place, not a symbolic link to nothing) and name none of the inputs: not the structure file,
  not the checkpoint in use nor its run's config.toml, and not each other.
* The calculator is the checkpoint's only when it is built in (or with
  ``--trust-checkpoint-calculator``): a ``module:Class`` stored in a checkpoint is never imported
  unless the user names it (``actors.calculators.refuse_untrusted``).
* ``--relax-cell`` relaxes the cell too: the policy moves ``FrechetCellFilter(atoms)``'s rows (atoms
  and cell, as the training environment with ``env.relax_cell`` does), ``--fmax`` is the filter's
  generalised force, and the written file has the relaxed cell. A structure that is not periodic
  in all three directions, or a calculator without stress, is refused before anything runs.
* Without ``--out`` the result goes to ``relaxed.cif``; if that file already exists the
  command stops with an error (it never overwrites a file it was not told to). An explicit
  ``--out`` is overwritten.

Exit status 0 whether or not it converged (the line says which); 2 with one clear line for
bad input.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ase.io import write
from ase.io.formats import filetype, ioformats

from actors.calculators import make_calculator, resolve_calculator
from actors.cell_filter import check_cell_relaxable
from actors.structure_check import policy_overlap_advice
from actors.structure_files import read_structure
from common.errors import RelaxRLError
from learner.checkpoint import list_checkpoints, resolve_checkpoint
from learner.policy import load_policy
from relaxrl.optimizer import CountingCalculator, PolicyDivergedError, RLOptimizer
from relaxrl.outputs import probe_writable, refuse_dangling_link, refuse_overwriting

DEFAULT_OUT = "relaxed.cif"
"""Where `relaxrl relax` writes without --out (refused when it exists)."""
KEEPS_CONSTRAINTS = frozenset({"extxyz", "vasp", "traj", "json", "db", "aims", "castep-cell", "eon",
                               "bundletrajectory"})
"""ASE formats that store FixAtoms / selective dynamics and give them back when read (checked by
tests/test_relax_cli.py); a structure with constraints written in any other format gets a note."""


class RelaxError(RelaxRLError):
    """Bad arguments to `relaxrl relax` (unwritable output, bad settings)."""


def check_writable_file(path: str | Path, flag: str, *, need_format: bool = True) -> Path:
    """Raise :class:`RelaxError` unless ``path`` can be written as a structure file; touches nothing.

    Checks: not a symbolic link to nothing, not a directory, the parent directory exists, ASE
    knows a format for the name that it can write and read back (``need_format``: a picture such
    as .png holds no coordinates), and the place is writable (an existing file is opened for
    appending without writing; otherwise a temporary file is created and removed next to it).
    """
    p = Path(path)
    refuse_dangling_link(flag, p)
    if p.is_dir():
        raise RelaxError(f"{flag} {p} is a directory; give a file name, e.g. {flag} {p / 'relaxed.extxyz'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise RelaxError(f"{flag} {p}: directory {parent} does not exist; create it first or choose another path")
    if need_format:
        try:
            fmt = filetype(str(p), read=False)
            writable = ioformats[fmt].can_write
        except Exception:  # ASE raises KeyError / UnknownFileTypeError for names it cannot place
            fmt, writable = None, False
        if not writable:
            raise RelaxError(f"{flag} {p}: ASE cannot write a structure format named like this"
                             f"{f' ({fmt})' if fmt else ''}; use a suffix such as .cif, .extxyz, .xyz, .traj or .vasp, "
                             "or a name like POSCAR / CONTCAR")
        if not ioformats[fmt].can_read:
            raise RelaxError(f"{flag} {p}: {fmt!r} is a picture or an input script that cannot be read back, so the "
                             "relaxed coordinates would be lost; use a structure format such as .extxyz, .traj, .cif "
                             "or POSCAR (and render pictures from it)")
    try:
        probe_writable(p, parent)
    except OSError as e:
        raise RelaxError(f"{flag} {p} cannot be written ({e.strerror or e}); choose a writable path") from None
    return p


def check_settings(fmax: float, steps: int, hybrid: int) -> None:
    """Raise :class:`RelaxError` for a force threshold, step budget or hybrid patience that cannot work."""
    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise RelaxError(f"--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got {fmax}")
    if steps < 1:
        raise RelaxError(f"--steps must be at least 1 (the most optimizer steps to take), got {steps}")
    if hybrid < 0:
        raise RelaxError(f"--hybrid must be >= 0 (0 = the policy alone), got {hybrid}")


def resolve_out(out: str | None) -> Path:
    """``--out``, or the default ``relaxed.cif`` unless that file exists (then an error: nothing is overwritten)."""
    if out is not None:
        return Path(out)
    p = Path(DEFAULT_OUT)
    if p.exists():
        raise RelaxError(f"{p} already exists and no --out was given; pass --out PATH (an explicit --out is "
                         "overwritten), or move the existing file")
    return p


def protected_inputs(structure: str | Path, checkpoint: Path) -> dict[str, Path]:
    """The files `relaxrl relax` reads, which no output may name: the structure, the checkpoint in use and,
    when it sits in a run directory, that run's config.toml and other checkpoints."""
    files = {"the input structure": Path(structure), "the checkpoint in use": checkpoint}
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else None
    if run_dir is not None:
        files["the config.toml of the checkpoint's run"] = run_dir / "config.toml"
        for other in list_checkpoints(run_dir):
            if other != checkpoint:
                files[f"checkpoint {other.name} of the run {run_dir}"] = other
    return files


def summary_line(name: str, s: dict[str, Any]) -> str:
    """One line: converged or not, steps (per part in hybrid mode), force calls, final Fmax, energy change."""
    status = "converged" if s["converged"] else "NOT converged"
    steps = f"{s['steps']} steps"
    if s["mode"] == "hybrid":
        steps += f" (rl {s['steps_rl']} + bfgs {s['steps_bfgs']})" if s["steps_bfgs"] or s["finished_by"] == "bfgs" \
            else f" (rl {s['steps_rl']}, no hand-over)"
    guard = s.get("guard_tripped")
    if guard:
        steps += (f"; the policy raised the energy by {guard['energy_rise']:.3g} eV at step {guard['step']} "
                  f"(limit {guard['limit']:.3g} eV), so BFGS went on from the start")
    return (f"{name}: {status} in {steps}, {s['force_calls']} force calls, final Fmax {s['fmax']:.4f} eV/Å "
            f"(target {s['fmax_target']}), energy change {s['energy_change']:+.4f} eV "
            f"({s['energy_initial']:.4f} → {s['energy_final']:.4f} eV)")


def relax_command(args: argparse.Namespace) -> int:
    """Relax ``args.input`` with the policy of ``args.checkpoint``; print the summary; write the result."""
    # Everything that can fail is checked before the relaxation, cheapest first.
    check_settings(args.fmax, args.steps, args.hybrid)
    out = check_writable_file(resolve_out(args.out), "--out")
    traj = None if args.trajectory is None else check_writable_file(args.trajectory, "--trajectory", need_format=False)
    checkpoint = resolve_checkpoint(args.checkpoint)
    refuse_overwriting({"--trajectory": traj, "--out": out}, protected_inputs(args.input, checkpoint))
    policy = load_policy(checkpoint)  # a bad checkpoint is reported before any work
    env = policy.config.env

    calc_name, kwargs = resolve_calculator(args.calculator, getattr(args, "calculator_kwargs", None), env,
                                           source=f"checkpoint {checkpoint}",
                                           trust=getattr(args, "trust_checkpoint_calculator", False))
    relax_cell = bool(getattr(args, "relax_cell", False))
    inner = make_calculator(calc_name, kwargs, option="--calculator")
    calc = CountingCalculator(inner, stress=relax_cell)
    atoms = read_structure(args.input, index=getattr(args, "index", None), calculator=calc_name,
                           min_distance_factor=env.min_distance_factor, calculator_option="--calculator",
                           overlap_advice=policy_overlap_advice(env.min_distance_factor))
    name = str(atoms.info.get("name", Path(args.input).name))
    if relax_cell:  # a periodic structure and a calculator with stress, or one line saying which is missing
        check_cell_relaxable(atoms, inner, name, option="--relax-cell")
    atoms.calc = calc
    opt = RLOptimizer(atoms, policy=policy, logfile=None, trajectory=args.trajectory, hybrid_patience=args.hybrid,
                      relax_cell=relax_cell, check=False)  # read_structure checked it: the same rule, calculator and factor
    try:
        opt.run(fmax=args.fmax, steps=args.steps)
    except PolicyDivergedError as e:  # the wrecked structure is never written
        raise PolicyDivergedError(f"{name}: {e}; nothing was written to {out}"
                                  + (f" ({args.trajectory} holds the steps before the stop)" if args.trajectory else "")
                                  ) from None
    s = opt.summary()
    s["force_calls"] = calc.calls  # every calculation, counted at the calculator
    print(summary_line(name, s))
    result = atoms.copy()  # numbers, positions, cell, pbc and constraints; no calculator
    result.info = {}
    try:
        write(str(out), result)
    except Exception as e:  # checked above, so only a race or a disk problem lands here
        raise RelaxError(f"cannot write --out {out} ({type(e).__name__}: {e}); the relaxation finished but its "
                         "result was not saved" + (f" (the last frame of {args.trajectory} holds it)" if args.trajectory
                                                   else "")) from None
    fmt = filetype(str(out), read=False)
    if result.constraints and fmt not in KEEPS_CONSTRAINTS:
        print(f"note: {out} is {'a CIF' if fmt == 'cif' else f'in the {fmt!r} format'}, which cannot store the "
              f"input's constraints ({', '.join(type(c).__name__ for c in result.constraints)}); write .extxyz, "
              ".traj or POSCAR to keep them", file=sys.stderr)
    print(f"wrote {out}" + (f" and {args.trajectory}" if args.trajectory else ""), file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(s))
    return 0
