"""`relaxrl eval`: the trained policy against ASE's optimizers on the same structures.

    report = evaluate(structures, ["rl", "bfgs", "fire"], fmax=0.05, steps=200,
                      calculator="emt", policy=policy)
    write_report(report, "eval-out")          # report.json, report.md, PNG plots

Every optimizer gets the same structures (fresh copies), the same calculator (a fresh
instance per run, wrapped in :class:`~relaxrl.optimizer.CountingCalculator` so that every
real calculation is counted once and cached repeats are not), the same ``fmax`` (eV/Å)
and the same step budget.

A run is a *success* when it converged (Fmax < fmax within the budget), its final energy is
at most ``energy_tol`` (1 meV/atom) above the lowest final energy any optimizer reached
on that structure, and the structure did not fall apart (more connected fragments at the
end than at the start, bonds judged at 1.3 × ASE's natural cutoffs). Runs that converge
into a higher minimum or by fragmenting are flagged in the report.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from common.errors import RelaxRLError
from relaxrl.optimizer import CountingCalculator, RLOptimizer

OPTIMIZERS = ("rl", "bfgs", "bfgsls", "lbfgs", "fire", "gpmin")
"""Optimizer names `relaxrl eval` knows; 'rl' needs a policy."""
ENERGY_TOL_EV_PER_ATOM = 1e-3
"""A converged run more than this above the best final energy (eV/atom) is not a success."""
FRAGMENT_CUTOFF_MULT = 1.3
"""Bonds for the fragmentation check: distance < this × (natural cutoff i + natural cutoff j)."""


class EvalError(RelaxRLError):
    """Bad arguments to `relaxrl eval` (unknown optimizer, no structures, missing checkpoint)."""


# ----------------------------------------------------------------------------- optimizers


def _ase_optimizer(name: str) -> type:
    from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, GPMin

    return {"bfgs": BFGS, "bfgsls": BFGSLineSearch, "lbfgs": LBFGS, "fire": FIRE, "gpmin": GPMin}[name]


def parse_optimizers(text: str | Sequence[str]) -> list[str]:
    """'rl,bfgs,fire' → ['rl', 'bfgs', 'fire'], rejecting unknown names with the list of valid ones."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        raise EvalError(f"unknown optimizer(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(OPTIMIZERS)}")
    return list(dict.fromkeys(names))


def make_optimizer(name: str, atoms: Atoms, policy: Any = None, hybrid_patience: int = 0):
    """An optimizer of this name on ``atoms``, with no logfile."""
    if name == "rl":
        if policy is None:
            raise EvalError("optimizer 'rl' needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
        return RLOptimizer(atoms, policy=policy, logfile=None, hybrid_patience=hybrid_patience)
    return _ase_optimizer(name)(atoms, logfile=None)


# ----------------------------------------------------------------------------- one run


def fragment_count(atoms: Atoms, mult: float = FRAGMENT_CUTOFF_MULT) -> int:
    """Connected fragments of the bond graph (bond: d < mult × sum of natural cutoffs), periodic images included."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(atoms)
    if n == 0:
        return 0
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def run_one(name: str, atoms: Atoms, calculator: Callable[[], Any], fmax: float, steps: int,
            policy: Any = None, hybrid_patience: int = 0) -> dict[str, Any]:
    """Relax a copy of ``atoms`` with optimizer ``name``; counts, energies, timing and the Fmax trace."""
    a = atoms.copy()
    calc = CountingCalculator(calculator())
    a.calc = calc
    record: dict[str, Any] = {"optimizer": name, "converged": False, "steps": 0, "force_calls": 0,
                              "fmax": math.nan, "energy": math.nan, "energy_initial": math.nan,
                              "wall_time_s": 0.0, "error": None, "fmax_trace": []}
    t0 = time.perf_counter()
    try:
        fragments0 = fragment_count(a)
        opt = make_optimizer(name, a, policy=policy, hybrid_patience=hybrid_patience)
        trace: list[float] = record["fmax_trace"]
        # Observers run after the optimizer evaluated the new geometry, so these reads are cached.
        opt.attach(lambda: trace.append(float(np.linalg.norm(a.get_forces(), axis=1).max())))
        record["energy_initial"] = float(a.get_potential_energy())
        converged = bool(opt.run(fmax=fmax, steps=steps))
        forces = a.get_forces()
        record.update(
            converged=converged,
            steps=int(opt.nsteps),
            fmax=float(np.linalg.norm(forces, axis=1).max()),
            energy=float(a.get_potential_energy()),
            fragments_initial=fragments0,
            fragments_final=fragment_count(a),
        )
        if isinstance(opt, RLOptimizer):
            record["rl"] = {k: v for k, v in opt.summary().items() if k not in ("optimizer",)}
        if not (np.all(np.isfinite(a.positions)) and math.isfinite(record["energy"]) and math.isfinite(record["fmax"])):
            record.update(converged=False, error="non-finite positions, energy or forces")
    except RelaxRLError:
        raise
    except Exception as e:  # an optimizer or calculator blowing up is a failed run, not a failed eval
        record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        record["converged"] = False
    record["wall_time_s"] = time.perf_counter() - t0
    record["force_calls"] = int(calc.calls)
    return record


# ----------------------------------------------------------------------------- statistics


def _stats(values: Iterable[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "mean": None, "p90": None, "min": None, "max": None}
    return {"n": int(v.size), "median": float(np.median(v)), "mean": float(v.mean()),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def _judge(structures: list[dict[str, Any]], energy_tol: float) -> None:
    """Per structure: best energy, energy above best (meV/atom), flags and success of each run (in place)."""
    for s in structures:
        runs = s["runs"]
        ok_energies = [r["energy"] for r in runs.values()
                       if r["error"] is None and math.isfinite(r["energy"])
                       and r.get("fragments_final", 1) <= r.get("fragments_initial", 1)]
        best = min(ok_energies) if ok_energies else math.nan
        s["best_energy"] = best
        for r in runs.values():
            above = (r["energy"] - best) / s["n_atoms"] if math.isfinite(best) and math.isfinite(r["energy"]) else math.nan
            r["energy_above_best_mev_per_atom"] = 1e3 * above if math.isfinite(above) else None
            r["fragmented"] = bool(r.get("fragments_final", 1) > r.get("fragments_initial", 1))
            r["higher_minimum"] = bool(r["converged"] and math.isfinite(above) and above > energy_tol)
            r["success"] = bool(r["converged"] and r["error"] is None and not r["fragmented"]
                                and math.isfinite(above) and above <= energy_tol)
        rl, bfgs = runs.get("rl"), runs.get("bfgs")
        s["rl_over_bfgs_force_calls"] = (rl["force_calls"] / bfgs["force_calls"]
                                         if rl is not None and bfgs is not None and bfgs["force_calls"] else None)


def _ratio_on_both_solved(structures: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Mean force calls of ``a`` over mean of ``b`` on the structures both solved."""
    pairs = [(s["runs"][a]["force_calls"], s["runs"][b]["force_calls"]) for s in structures
             if a in s["runs"] and b in s["runs"] and s["runs"][a]["success"] and s["runs"][b]["success"]]
    if not pairs:
        return {"ratio": None, "n_both_solved": 0}
    ca, cb = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
    return {"ratio": float(ca / cb) if cb else None, "n_both_solved": len(pairs)}


def summarize(structures: list[dict[str, Any]], optimizers: Sequence[str]) -> dict[str, Any]:
    """Per-optimizer aggregates over the structure records."""
    out: dict[str, Any] = {}
    for name in optimizers:
        runs = [s["runs"][name] for s in structures if name in s["runs"]]
        solved = [r for r in runs if r["success"]]
        out[name] = {
            "n_runs": len(runs),
            "n_success": len(solved),
            "success_rate": len(solved) / len(runs) if runs else None,
            "n_converged": sum(r["converged"] for r in runs),
            "n_higher_minimum": sum(r["higher_minimum"] for r in runs),
            "n_fragmented": sum(r["fragmented"] for r in runs),
            "n_errors": sum(r["error"] is not None for r in runs),
            "force_calls": _stats(r["force_calls"] for r in runs),
            "force_calls_solved": _stats(r["force_calls"] for r in solved),
            "steps": _stats(r["steps"] for r in runs),
            "energy_above_best_mev_per_atom": _stats(r["energy_above_best_mev_per_atom"] for r in runs),
            "wall_time_s": {"total": float(sum(r["wall_time_s"] for r in runs)),
                            "mean": float(np.mean([r["wall_time_s"] for r in runs])) if runs else None},
        }
    return out


# ----------------------------------------------------------------------------- evaluate


def _named(structures: Sequence[Atoms] | Mapping[str, Atoms]) -> list[tuple[str, Atoms]]:
    if isinstance(structures, Mapping):
        items = list(structures.items())
    else:
        items = [(str(a.info.get("name", f"{i:03d}-{a.get_chemical_formula()}")), a) for i, a in enumerate(structures)]
    seen: dict[str, int] = {}
    named = []
    for name, atoms in items:  # names must be unique: they key the report
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", atoms))
    return named


def calculator_factory(calculator: str | Callable[[], Any], kwargs: dict | None = None) -> Callable[[], Any]:
    """A zero-argument factory of fresh calculators from a name ('emt', 'module:Class') or a factory."""
    if callable(calculator):
        return calculator
    from actors.env import make_calculator

    make_calculator(calculator, kwargs)  # fail now, with the env's clear message, not inside every run
    return lambda: make_calculator(calculator, kwargs)


def evaluate(
    structures: Sequence[Atoms] | Mapping[str, Atoms],
    optimizers: Sequence[str] | str = OPTIMIZERS,
    fmax: float = 0.05,
    steps: int = 200,
    calculator: str | Callable[[], Any] = "emt",
    policy: Any = None,
    progress: bool = True,
    calculator_kwargs: dict | None = None,
    energy_tol: float = ENERGY_TOL_EV_PER_ATOM,
    hybrid_patience: int = 0,
) -> dict[str, Any]:
    """Relax every structure with every optimizer and compare (see the module docstring).

    Returns a JSON-able dict: ``settings``, ``optimizers`` (per-optimizer aggregates),
    ``structures`` (per-structure runs, with the Fmax trace of each run), ``comparisons``
    (``rl_vs_bfgs_force_calls``, ``rl_vs_fire_force_calls`` and every optimizer vs BFGS: ratio of
    mean force calls on the structures both solved).
    """
    names = parse_optimizers(optimizers)
    if not fmax > 0 or steps < 1:
        raise EvalError(f"fmax must be > 0 eV/Å and steps >= 1, got fmax={fmax}, steps={steps}")
    if "rl" in names and policy is None:
        raise EvalError("optimizer 'rl' needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
    named = _named(structures)
    if not named:
        raise EvalError("no structures to evaluate")
    make_calc = calculator_factory(calculator, calculator_kwargs)

    records: list[dict[str, Any]] = []
    total = len(named) * len(names)
    t_start = time.perf_counter()
    with _progress(progress, total) as advance:
        for sname, atoms in named:
            s = {"name": sname, "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms),
                 "periodic": bool(atoms.pbc.any()), "runs": {}}
            for opt in names:
                advance(f"{sname} · {opt}")
                s["runs"][opt] = run_one(opt, atoms, make_calc, fmax, steps, policy=policy,
                                         hybrid_patience=hybrid_patience)
            records.append(s)
        advance(None)
    _judge(records, energy_tol)

    comparisons: dict[str, Any] = {}
    if "rl" in names and "bfgs" in names:
        comparisons["rl_vs_bfgs_force_calls"] = _ratio_on_both_solved(records, "rl", "bfgs")
    if "rl" in names and "fire" in names:
        comparisons["rl_vs_fire_force_calls"] = _ratio_on_both_solved(records, "rl", "fire")
    if "bfgs" in names:
        for opt in names:
            if opt not in ("bfgs", "rl"):
                comparisons[f"{opt}_vs_bfgs_force_calls"] = _ratio_on_both_solved(records, opt, "bfgs")

    policy_info = None
    if policy is not None:
        policy_info = {"version": getattr(policy, "version", None), "config_name": policy.config.run.name,
                       "max_step": policy.config.env.max_step,
                       "min_distance_factor": policy.config.env.min_distance_factor}
    return {
        "settings": {
            "fmax": fmax, "steps": steps, "energy_tol_ev_per_atom": energy_tol,
            "calculator": calculator if isinstance(calculator, str) else getattr(calculator, "__name__", repr(calculator)),
            "optimizers": names, "n_structures": len(records), "hybrid_patience": hybrid_patience,
            "policy": policy_info, "wall_time_s": time.perf_counter() - t_start,
        },
        "optimizers": summarize(records, names),
        "comparisons": comparisons,
        "structures": records,
    }


class _progress:
    """A rich progress bar (or nothing): ``with _progress(on, total) as advance: advance('label')``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._bar: Any = None
        self._started = False

    def __enter__(self) -> Callable[[str | None], None]:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]eval[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), transient=False)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self._advance

    def _advance(self, label: str | None) -> None:
        if self._bar is None:
            return
        if self._started:
            self._bar.advance(self._task)
        self._started = True
        self._bar.update(self._task, description=label or "done")

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()


# ----------------------------------------------------------------------------- structures and CLI


def read_structure_dir(path: str | Path, limit: int = 0, calculator: str = "emt",
                       min_distance_factor: float = 0.6) -> dict[str, Atoms]:
    """Every structure in the files of a directory (sorted by name; every frame of multi-frame files)."""
    from relaxrl.relax import read_structures

    d = Path(path)
    if not d.is_dir():
        raise EvalError(f"--structures {d}: not a directory; pass a directory of structure files or 'held-out'")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise EvalError(f"--structures {d}: no files in it")
    structures: list[Atoms] = []
    for p in files:
        structures += read_structures(p, calculator=calculator, min_distance_factor=min_distance_factor)
        if limit and len(structures) >= limit:
            break
    return dict(_named(structures[:limit] if limit else structures))


def heldout_structures(cfg: Any, limit: int = 0) -> dict[str, Atoms]:
    """The held-out split of the config's structure source (``curriculum.source``, 'demo' by default)."""
    from actors.structures import load_structures

    _, held = load_structures(cfg.curriculum.source, cfg.curriculum, cfg.run.seed, calculator=cfg.env.calculator,
                              min_distance_factor=cfg.env.min_distance_factor)
    if limit:
        held = held[:limit]
    if not held:
        raise EvalError(f"the held-out split of {cfg.curriculum.source!r} is empty; raise curriculum.heldout_fraction")
    return dict(_named(held))


def eval_command(args: argparse.Namespace) -> int:
    """`relaxrl eval`: see the module docstring; writes report.json, report.md and plots to --out."""
    from common.config import load_config
    from relaxrl.reports import print_summary, write_report

    names = parse_optimizers(args.optimizers)
    policy = None
    if args.checkpoint:
        from learner.policy import load_policy

        policy = load_policy(args.checkpoint)
    elif "rl" in names:
        raise EvalError("optimizer 'rl' needs --checkpoint CKPT (a checkpoint file or run directory); "
                        "or leave 'rl' out of --optimizers")
    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif policy is not None:
        cfg = policy.config
        if args.overrides:
            from common.config import from_dict, parse_override, to_dict

            data = to_dict(cfg)
            for text in args.overrides:
                section, key, value = parse_override(text)
                data.setdefault(section, {})[key] = value
            cfg = from_dict(data)
    else:
        from relaxrl.cli import DEFAULT_CONFIG

        cfg = load_config(DEFAULT_CONFIG, args.overrides)

    if args.structures == "held-out":
        structures = heldout_structures(cfg, args.limit)
    else:
        structures = read_structure_dir(args.structures, args.limit, calculator=args.calculator,
                                        min_distance_factor=cfg.env.min_distance_factor)
    kwargs = cfg.env.calculator_kwargs if args.calculator == cfg.env.calculator else None
    report = evaluate(structures, names, fmax=args.fmax, steps=args.steps, calculator=args.calculator,
                      calculator_kwargs=kwargs, policy=policy, progress=not getattr(args, "no_progress", False),
                      hybrid_patience=getattr(args, "hybrid", 0))
    report["settings"]["structures"] = args.structures
    report["settings"]["checkpoint"] = args.checkpoint
    paths = write_report(report, args.out)
    print_summary(report)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
