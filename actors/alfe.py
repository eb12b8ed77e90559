"""Al–Fe crystal cells relaxed under a universal potential: the original work's training setting.

    train, heldout = alfe_structures(cfg.curriculum, seed=0, calculator="chgnet")   # curriculum.source = "alfe"
    cells = alfe_structure_set("alfe-large", n=8, seed=0, calculator="chgnet")      # relaxrl eval --structures alfe-large

Sets (each cell ``k`` of a set comes from its own seeded generator ``[seed, set, k]``, so a
cell never depends on how many others were asked for):

    ``alfe-train``    2–8 atoms    the training minima (``curriculum.source = "alfe"``)
    ``alfe-heldout``  2–8 atoms    other seeds, same sizes: the held-out evaluation
    ``alfe-large``    12–20 atoms  larger cells than any seen in training

A cell: ``n`` atoms (uniform in the set's sizes), ``n_Fe`` uniform in 1..n−1 (always both
elements), a random space group whose Wyckoff positions fit that composition, placed by
``pyxtal`` (``pip install -e ".[mlip]"``). Its *minimum*: BFGS on positions and cell
(``FrechetCellFilter``) to Fmax < 0.02 eV/Å within 300 steps under the configured calculator, and
a minimum of atoms and cell together: an end point whose Hessian over the filter's rows has a
negative eigenvalue (a symmetric cell BFGS could not leave) is pushed along that mode and relaxed
again (:func:`relax_minimum`; generator version 1 kept those saddles). Cells that do not converge,
stay on a saddle, collapse or fall apart are dropped (and the next index is used).
An episode starts from a minimum with every atom displaced by a random vector of length up
to :data:`MAX_PERTURB` = 0.5 Å (uniform in the ball), redrawn while any pair would overlap.
Training minima carry ``info["perturb"]``, so the curriculum draws a fresh displacement per
episode; held-out and large cells are displaced once, with a seeded generator.

Minima are cached on disk, one JSON file per cell, under ``$RELAXRL_CACHE_DIR`` (default
``~/.cache/relaxrl``)``/alfe/<set>-s<seed>-<calculator>/``; a run recomputes only the cells
missing there. The cache key holds the generator version, the calculator and its kwargs
(all but ``device``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from actors.calculators import BUILTIN_DEFAULTS, calculator_elements, make_calculator
from actors.geometry import find_overlaps, perturb
from actors.hessian import is_saddle, lowest_mode
from common.config import CurriculumConfig
from common.errors import RelaxRLError

__all__ = ["ALFE_SETS", "MAX_PERTURB", "alfe_minima", "alfe_structure_set", "alfe_structures",
           "cache_root", "perturb", "random_alfe_cell", "relax_minimum"]

GENERATOR_VERSION = 2
"""Bumped whenever a change to generation or relaxation would change the cells (invalidates the cache)."""
ALFE_SETS = {"alfe-train": ((2, 8), 0), "alfe-heldout": ((2, 8), 1), "alfe-large": ((12, 20), 2)}
"""Set name → ((min atoms, max atoms), seed stream)."""
MAX_PERTURB = 0.5
"""Largest displacement (Å) of one atom away from its minimum at the start of an episode."""
RELAX_FMAX = 0.02
"""Fmax (eV/Å, on atoms and cell) the cached minima are relaxed to."""
RELAX_STEPS = 300
"""BFGS steps allowed per minimum (per run of BFGS: once, and once more after each saddle escape)."""
SADDLE_ESCAPES = 4
"""How many times :func:`relax_minimum` pushes a saddle point of atoms and cell off along its negative mode."""
ESCAPE_STEP = 0.15
"""Length (in the cell filter's rows: Å for an atom) of the largest row of such a push."""
VOLUME_PER_ATOM = (8.0, 40.0)
"""A minimum with a volume per atom (Å³) outside this range collapsed or exploded and is dropped."""


class AlFeError(RelaxRLError):
    """Al–Fe cells cannot be generated as asked (missing package, calculator without Fe, bad set name)."""


def cache_root() -> Path:
    """``$RELAXRL_CACHE_DIR`` or ``~/.cache/relaxrl``."""
    return Path(os.environ.get("RELAXRL_CACHE_DIR") or Path.home() / ".cache" / "relaxrl")


# ----------------------------------------------------------------------------- one cell


def random_alfe_cell(n_atoms: int, rng: np.random.Generator, max_tries: int = 200) -> tuple[Atoms, int]:
    """A random symmetric Al–Fe crystal of ``n_atoms`` atoms (both elements present) and its space group."""
    # pyxtal is optional (the mlip extra): only the generated Al–Fe cells need it
    try:
        from pyxtal import pyxtal
    except ImportError as e:
        raise AlFeError(f"Al–Fe cells need the pyxtal package ({e}); install it with "
                        'pip install -e ".[mlip]" -c constraints.txt') from None
    n_fe = int(rng.integers(1, n_atoms))
    for _ in range(max_tries):
        group = int(rng.integers(1, 231))
        crystal = pyxtal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # pyxtal raises when the composition does not fit the group's Wyckoff positions
                crystal.from_random(3, group, ["Al", "Fe"], [n_atoms - n_fe, n_fe], factor=1.0, random_state=rng)
            except Exception:  # noqa: BLE001, S112 - pyxtal raises many types; the next group is tried
                continue
        if crystal.valid:
            a = crystal.to_ase()
            return Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True), group
    raise AlFeError(f"pyxtal placed no Al–Fe cell of {n_atoms} atoms in {max_tries} space groups")


def relax_minimum(atoms: Atoms, calc: Any, fmax: float = RELAX_FMAX, steps: int = RELAX_STEPS) -> tuple[Atoms, dict]:
    """BFGS on positions and cell under ``calc`` until a minimum of both; the relaxed copy and what happened
    (converged, steps, energy, ``saddle_escapes``, ``lowest_curvature``).

    BFGS keeps a symmetric cell symmetric, so from pyxtal's cells it often stops on a stationary point that is a
    saddle of atoms and cell together (a shear instability the atoms' Hessian cannot see). Each converged end is
    checked over the cell filter's rows (:func:`actors.hessian.lowest_mode`, 2(3n + 9) calls); on a saddle the
    cell and atoms are pushed :data:`ESCAPE_STEP` along the negative mode (the sign that lowers the energy) and
    BFGS goes on, at most :data:`SADDLE_ESCAPES` times."""
    a = atoms.copy()
    a.calc = calc
    total_steps, escapes, curvature = 0, 0, math.nan
    while True:
        opt = BFGS(FrechetCellFilter(a), logfile=None)
        converged = bool(opt.run(fmax=fmax, steps=steps))
        total_steps += int(opt.nsteps)
        if not converged:
            break
        curvature, mode = lowest_mode(a, calc, cell=True)
        if not is_saddle(curvature) or escapes >= SADDLE_ESCAPES:
            break
        escapes += 1
        rows = FrechetCellFilter(a)
        x0 = rows.get_positions()
        push = ESCAPE_STEP * mode.reshape(-1, 3) / np.linalg.norm(mode.reshape(-1, 3), axis=1).max()
        trials = []
        for sign in (1.0, -1.0):
            rows.set_positions(x0 + sign * push)
            trials.append((float(a.get_potential_energy()), sign))
        rows.set_positions(x0 + min(trials)[1] * push)
    out = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True)
    forces = a.get_forces()
    info = {"converged": converged, "relax_steps": total_steps,
            "fmax": float(np.linalg.norm(forces, axis=1).max()),
            "energy_per_atom": float(a.get_potential_energy()) / len(a),
            "saddle_escapes": escapes, "lowest_curvature": curvature if math.isfinite(curvature) else None,
            "saddle": bool(converged and is_saddle(curvature))}
    return out, info


# ----------------------------------------------------------------------------- sets and cache


def _calc_tag(calculator: str, kwargs: dict | None) -> str:
    calculator = calculator.lower() if calculator.lower() in BUILTIN_DEFAULTS else calculator
    full = {**BUILTIN_DEFAULTS.get(calculator, {}), **(kwargs or {})}  # 'chgnet' and its defaults spelled out: one cache
    key = {k: v for k, v in full.items() if k != "device"}
    digest = hashlib.sha1(json.dumps([GENERATOR_VERSION, calculator, key], sort_keys=True, default=repr).encode()).hexdigest()
    safe = "".join(c if c.isalnum() else "_" for c in calculator)[:32]
    return f"{safe}-{digest[:10]}"


def _set_spec(name: str) -> tuple[tuple[int, int], int]:
    if name not in ALFE_SETS:
        raise AlFeError(f"unknown Al–Fe set {name!r}; choose from {', '.join(ALFE_SETS)}")
    return ALFE_SETS[name]


def _check_calculator(calculator: str) -> None:
    allowed = calculator_elements(calculator)
    if allowed is not None and not {"Al", "Fe"} <= allowed:
        raise AlFeError(f"Al–Fe cells need a calculator that handles Al and Fe; {calculator!r} does not "
                        "(set env.calculator = 'chgnet', or --calculator chgnet)")


def alfe_minima(set_name: str, n: int, seed: int = 0, calculator: str = "chgnet",
                calculator_kwargs: dict | None = None, cache_dir: str | Path | None = None,
                verbose: bool = True) -> list[Atoms]:
    """The first ``n`` minima of a set (see the module docstring), from the cache or relaxed now."""
    (lo, hi), _ = _set_spec(set_name)
    _check_calculator(calculator)
    if n < 1:
        return []
    d = Path(cache_dir or cache_root()) / "alfe" / f"{set_name}-s{seed}-{_calc_tag(calculator, calculator_kwargs)}"
    out: list[Atoms] = []
    calc = None
    t0, computed = time.perf_counter(), 0
    k = 0
    while len(out) < n:
        if k >= 4 * n + 20:
            raise AlFeError(f"only {len(out)} of {n} {set_name} cells relaxed under {calculator!r} in {k} tries; "
                            f"see the failed records in {d}")
        path = d / f"{k:05d}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
        else:
            if calc is None:
                calc = make_calculator(calculator, calculator_kwargs)
                if verbose:
                    print(f"relaxrl: relaxing {set_name} Al–Fe cells ({lo}–{hi} atoms) under {calculator!r}; "
                          f"cached in {d}", file=sys.stderr, flush=True)
            rec = _relax_cell(set_name, seed, k, calc)
            d.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, path)
            computed += 1
        if rec["status"] == "ok":
            atoms = Atoms(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"], pbc=True)
            atoms.info.update(name=f"{set_name}-s{seed}-{k:03d}-{rec['formula']}", kind="alfe",
                              spacegroup=rec["spacegroup"], energy_per_atom=rec["energy_per_atom"])
            out.append(atoms)
        k += 1
    if computed and verbose:
        print(f"relaxrl: {computed} {set_name} cells relaxed in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def _relax_cell(set_name: str, seed: int, k: int, calc: Any) -> dict[str, Any]:
    """Generate cell ``k`` of a set and relax it; a JSON-able record with status 'ok' or 'failed' and why."""
    (lo, hi), stream = _set_spec(set_name)
    rng = np.random.default_rng([seed, stream, k])
    n = int(rng.integers(lo, hi + 1))
    atoms, group = random_alfe_cell(n, rng)
    rec: dict[str, Any] = {"version": GENERATOR_VERSION, "set": set_name, "seed": seed, "index": k,
                           "spacegroup": group, "formula": atoms.get_chemical_formula(), "n_atoms": n}
    try:
        minimum, info = relax_minimum(atoms, calc)
    except Exception as e:  # noqa: BLE001 - a calculator blowing up on a random cell drops that cell
        return {**rec, "status": "failed", "reason": f"{type(e).__name__}: {str(e)[:200]}"}
    rec.update(info)
    volume = minimum.get_volume() / n
    problem = None
    if not info["converged"]:
        problem = f"BFGS did not reach Fmax < {RELAX_FMAX} eV/Å in {RELAX_STEPS} steps"
    elif info["saddle"]:
        problem = f"still a saddle point of atoms and cell after {SADDLE_ESCAPES} escapes"
    elif not (math.isfinite(info["energy_per_atom"]) and np.isfinite(minimum.positions).all()):
        problem = "non-finite energy or positions"
    elif not VOLUME_PER_ATOM[0] <= volume <= VOLUME_PER_ATOM[1]:
        problem = f"volume {volume:.1f} Å³/atom outside {VOLUME_PER_ATOM}"
    elif find_overlaps(minimum, 0.6):
        problem = "atoms overlap at the minimum"
    if problem:
        return {**rec, "status": "failed", "reason": problem}
    return {**rec, "status": "ok", "volume_per_atom": volume, "numbers": minimum.numbers.tolist(),
            "positions": minimum.positions.tolist(), "cell": np.asarray(minimum.cell).tolist()}


def alfe_structure_set(name: str, n: int = 0, seed: int = 0, calculator: str = "chgnet",
                       calculator_kwargs: dict | None = None, min_distance_factor: float = 0.6,
                       cache_dir: str | Path | None = None) -> list[Atoms]:
    """``n`` fixed evaluation cells of set ``name``: minima displaced once by up to 0.5 Å (seeded).

    ``n = 0`` means the default count: 16 for ``alfe-heldout``, 8 for ``alfe-large``.
    This is what ``relaxrl eval --structures alfe-heldout`` / ``alfe-large`` evaluates on.
    """
    _, stream = _set_spec(name)
    n = n or (8 if name == "alfe-large" else 16)
    minima = alfe_minima(name, n, seed, calculator, calculator_kwargs, cache_dir)
    out = []
    for atoms in minima:
        k = int(atoms.info["name"].split("-")[-2])
        start = perturb(atoms, MAX_PERTURB, np.random.default_rng([seed, stream, k, 1]), min_distance_factor)
        start.info["name"] = atoms.info["name"]
        out.append(start)
    return out


def alfe_structures(cfg: CurriculumConfig, seed: int, calculator: str = "chgnet", calculator_kwargs: dict | None = None,
                    min_distance_factor: float = 0.6, cache_dir: str | Path | None = None) -> tuple[list[Atoms], list[Atoms]]:
    """(train, held-out) for ``curriculum.source = "alfe"``: ``n_structures`` cells split by ``heldout_fraction``.

    Training minima carry ``info["perturb"] = 0.5`` (the curriculum displaces them anew each
    episode); held-out cells are the first cells of ``alfe-heldout``, displaced once.
    """
    n_held = round(cfg.n_structures * cfg.heldout_fraction) if cfg.heldout_fraction > 0 else 0
    n_train = cfg.n_structures - n_held
    if n_train < 1:
        raise AlFeError(f"curriculum.n_structures = {cfg.n_structures} with heldout_fraction = {cfg.heldout_fraction} "
                        "leaves no training cell; raise n_structures")
    train = alfe_minima("alfe-train", n_train, seed, calculator, calculator_kwargs, cache_dir)
    for atoms in train:
        atoms.info["perturb"] = MAX_PERTURB
    held = alfe_structure_set("alfe-heldout", n_held, seed, calculator, calculator_kwargs, min_distance_factor,
                              cache_dir) if n_held else []
    return train, held
