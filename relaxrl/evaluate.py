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
end than at the start, bonds judged at 1.5 × ASE's natural cutoffs). Runs that converge
into a higher minimum or by fragmenting are flagged in the report.

Fmax < fmax holds at saddle points too. With ``curvature_max_atoms = N`` (``relaxrl eval
--curvature-check N``) every converged run on a structure of at most N free atoms also gets the
lowest eigenvalue of the finite-difference Hessian over its free coordinates
(``lowest_curvature_ev_per_a2``; 6 force calls per free atom on a separate calculator, not
counted); below −:data:`SADDLE_CURVATURE_EV_PER_A2` the run is flagged ``saddle`` (it ended on a
saddle point, not in a minimum) instead of ``higher_minimum``. Success is judged by energy as
above either way.

The evaluation `relaxrl train` runs when training ends is this same evaluation
(:func:`evaluate_after_training`): the trained policy ('rl'), the run's untrained policy
('untrained') and BFGS (the reference minimum) on the held-out structures, written with the
same report writer as ``eval.json`` / ``eval.md`` in the run directory.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from actors.alfe import ALFE_SETS, alfe_structure_set
from actors.calculators import make_calculator, resolve_calculator
from actors.hessian import SADDLE_CURVATURE_EV_PER_A2, curvature_if_small, is_saddle
from actors.structures import load_structures, read_structure_source
from actors.suite import SUITE_SEED, VALIDATION_SEED, generalisation_suite
from common.config import from_dict, load_config, parse_override, to_dict
from common.errors import RelaxRLError
from learner.policy import Policy, load_policy
from relaxrl.cli import DEFAULT_CONFIG
from relaxrl.optimizer import CountingCalculator, PolicyDivergedError, RLOptimizer
from relaxrl.outputs import probe_writable
from relaxrl.reports import print_summary, write_report

OPTIMIZERS = ("rl", "bfgs", "bfgsls", "lbfgs", "fire", "gpmin")
"""Optimizer names `relaxrl eval` knows; 'rl' needs a policy."""
SUITE_SETS = {"suite": SUITE_SEED, "suite-val": VALIDATION_SEED}
"""``--structures`` names of the generalisation suite and of its validation draw (same recipes, other random
draws: for choosing settings without looking at the suite that judges them), with their seeds."""
ENERGY_TOL_EV_PER_ATOM = 1e-3
"""A converged run more than this above the best final energy (eV/atom) is not a success."""
FRAGMENT_CUTOFF_MULT = 1.5
"""Bonds for the fragmentation check: distance < this × (natural cutoff i + natural cutoff j)."""


class EvalError(RelaxRLError):
    """Bad arguments to `relaxrl eval` (unknown optimizer, no structures, missing checkpoint)."""


# ----------------------------------------------------------------------------- optimizers


def _ase_optimizer(name: str) -> type:
    from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, GPMin

    return {"bfgs": BFGS, "bfgsls": BFGSLineSearch, "lbfgs": LBFGS, "fire": FIRE, "gpmin": GPMin}[name]


def parse_optimizers(text: str | Sequence[str], policies: Iterable[str] = ()) -> list[str]:
    """'rl,bfgs,fire' → ['rl', 'bfgs', 'fire'], rejecting unknown names with the list of valid ones.

    ``policies``: further names that are policies (e.g. 'untrained'), valid besides :data:`OPTIMIZERS`.
    """
    valid = list(OPTIMIZERS) + [p for p in policies if p not in OPTIMIZERS]
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise EvalError(f"unknown optimizer(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(valid)}")
    return list(dict.fromkeys(names))


def make_optimizer(name: str, atoms: Atoms, policy: Any = None, hybrid_patience: int = 0):
    """An optimizer of this name on ``atoms``, with no logfile: one of ASE's, or an RLOptimizer of ``policy``."""
    if name in OPTIMIZERS and name != "rl":
        return _ase_optimizer(name)(atoms, logfile=None)
    if policy is None:
        raise EvalError(f"optimizer {name!r} needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
    return RLOptimizer(atoms, policy=policy, logfile=None, hybrid_patience=hybrid_patience)


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
            policy: Any = None, hybrid_patience: int = 0, curvature_max_atoms: int = 0) -> dict[str, Any]:
    """Relax a copy of ``atoms`` with optimizer ``name``; counts, energies, timing and the Fmax trace.

    With ``curvature_max_atoms`` > 0, a converged run on at most that many free atoms also gets
    ``lowest_curvature_ev_per_a2`` (:func:`lowest_curvature`, a fresh calculator, not counted)."""
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
    except PolicyDivergedError as e:  # the safety guard stopped the policy: a failed run (atoms back at the start)
        record["error"] = f"PolicyDivergedError: {str(e).split(': the checkpoint')[0]}"
        record["converged"] = False
    except RelaxRLError:
        raise
    except Exception as e:  # an optimizer or calculator blowing up is a failed run, not a failed eval
        record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        record["converged"] = False
    record["wall_time_s"] = time.perf_counter() - t0
    record["force_calls"] = int(calc.calls)
    record["lowest_curvature_ev_per_a2"] = None
    if curvature_max_atoms > 0 and record["converged"]:
        value = curvature_if_small(a, calculator, curvature_max_atoms)
        record["lowest_curvature_ev_per_a2"] = value if value is not None and math.isfinite(value) else None
    return record


# ----------------------------------------------------------------------------- statistics


def _stats(values: Iterable[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "mean": None, "p90": None, "min": None, "max": None}
    return {"n": int(v.size), "median": float(np.median(v)), "mean": float(v.mean()),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def judge(structures: list[dict[str, Any]], energy_tol: float) -> None:
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
            curvature = r.get("lowest_curvature_ev_per_a2")
            r["saddle"] = bool(r["converged"] and is_saddle(curvature))
            r["higher_minimum"] = bool(r["converged"] and not r["saddle"] and math.isfinite(above) and above > energy_tol)
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
            "n_saddle": sum(r["saddle"] for r in runs),
            "n_curvature_checked": sum(r.get("lowest_curvature_ev_per_a2") is not None for r in runs),
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


def summarize_by_kind(structures: list[dict[str, Any]], optimizers: Sequence[str]) -> dict[str, Any]:
    """Success and force-call ratios per structure kind (``record["kind"]``) and ``"overall"``.

    Each entry: ``n_structures``; per optimizer ``n_runs``, ``n_success``, ``success_rate``; and
    ``rl_vs_bfgs_force_calls`` / ``rl_vs_fire_force_calls`` (:func:`_ratio_on_both_solved`) where
    both optimizers ran. Kinds keep their first-seen order; ``"overall"`` comes last.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for s in structures:
        groups.setdefault(s.get("kind", "file"), []).append(s)
    groups["overall"] = list(structures)
    out: dict[str, Any] = {}
    for kind, group in groups.items():
        entry: dict[str, Any] = {"n_structures": len(group), "optimizers": {}}
        for name, agg in summarize(group, optimizers).items():
            entry["optimizers"][name] = {k: agg[k] for k in ("n_runs", "n_success", "success_rate")}
        for other in ("bfgs", "fire"):
            if "rl" in optimizers and other in optimizers:
                entry[f"rl_vs_{other}_force_calls"] = _ratio_on_both_solved(group, "rl", other)
        out[kind] = entry
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


def check_budget(fmax: float, steps: int) -> None:
    """Raise :class:`EvalError` unless ``fmax`` is a finite force threshold > 0 eV/Å and ``steps`` >= 1."""
    if not (isinstance(fmax, (int, float)) and math.isfinite(fmax) and fmax > 0):
        raise EvalError(f"--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got {fmax}")
    if steps < 1:
        raise EvalError(f"--steps must be at least 1 (the most optimizer steps per run), got {steps}")


def calculator_factory(calculator: str | Callable[[], Any], kwargs: dict | None = None) -> Callable[[], Any]:
    """A zero-argument factory of fresh calculators from a name ('emt', 'module:Class') or a factory."""
    if callable(calculator):
        return calculator

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
    policies: Mapping[str, Any] | None = None,
    curvature_max_atoms: int = 0,
) -> dict[str, Any]:
    """Relax every structure with every optimizer and compare (see the module docstring).

    ``policy`` is the policy of optimizer 'rl'; ``policies`` names further policies that
    ``optimizers`` may list (e.g. ``{"untrained": p}``), each run as an RLOptimizer.
    ``curvature_max_atoms`` > 0 checks converged runs on structures of at most that many free
    atoms for saddle points (module docstring).

    Returns a JSON-able dict: ``settings``, ``optimizers`` (per-optimizer aggregates),
    ``structures`` (per-structure runs, with the Fmax trace of each run), ``comparisons``
    (``rl_vs_bfgs_force_calls``, ``rl_vs_fire_force_calls`` and every optimizer vs BFGS: ratio of
    mean force calls on the structures both solved),
    ``by_kind`` (:func:`summarize_by_kind`: success and rl/bfgs, rl/fire ratios per
    ``atoms.info["kind"]``, 'file' where unset, and overall).
    """
    by_name = dict(policies or {})
    if policy is not None:
        by_name["rl"] = policy
    names = parse_optimizers(optimizers, by_name)
    check_budget(fmax, steps)
    missing = [n for n in names if n not in by_name and not (n in OPTIMIZERS and n != "rl")]
    if missing:
        raise EvalError(f"optimizer {missing[0]!r} needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
    named = _named(structures)
    if not named:
        raise EvalError("no structures to evaluate")
    make_calc = calculator_factory(calculator, calculator_kwargs)

    records: list[dict[str, Any]] = []
    total = len(named) * len(names)
    t_start = time.perf_counter()
    with _progress(progress, total) as advance:
        for sname, atoms in named:
            s = {"name": sname, "kind": str(atoms.info.get("kind", "file")), "formula": atoms.get_chemical_formula(),
                 "n_atoms": len(atoms), "periodic": bool(atoms.pbc.any()), "runs": {}}
            for opt in names:
                advance(f"{sname} · {opt}")
                s["runs"][opt] = run_one(opt, atoms, make_calc, fmax, steps, policy=by_name.get(opt),
                                         hybrid_patience=hybrid_patience, curvature_max_atoms=curvature_max_atoms)
            records.append(s)
        advance(None)
    judge(records, energy_tol)

    comparisons: dict[str, Any] = {}
    if "rl" in names and "bfgs" in names:
        comparisons["rl_vs_bfgs_force_calls"] = _ratio_on_both_solved(records, "rl", "bfgs")
    if "rl" in names and "fire" in names:
        comparisons["rl_vs_fire_force_calls"] = _ratio_on_both_solved(records, "rl", "fire")
    if "bfgs" in names:
        for opt in names:
            if opt not in ("bfgs", "rl"):
                comparisons[f"{opt}_vs_bfgs_force_calls"] = _ratio_on_both_solved(records, opt, "bfgs")

    policy_info = {n: {"version": getattr(p, "version", None), "config_name": p.config.run.name,
                       "max_step": p.config.env.max_step, "min_distance_factor": p.config.env.min_distance_factor}
                   for n, p in by_name.items() if n in names}
    return {
        "settings": {
            "fmax": fmax, "steps": steps, "energy_tol_ev_per_atom": energy_tol,
            "calculator": calculator if isinstance(calculator, str) else getattr(calculator, "__name__", repr(calculator)),
            "optimizers": names, "n_structures": len(records), "hybrid_patience": hybrid_patience,
            "curvature_max_atoms": curvature_max_atoms, "saddle_curvature_ev_per_a2": SADDLE_CURVATURE_EV_PER_A2,
            "policy": policy_info.get("rl"), "policies": policy_info, "wall_time_s": time.perf_counter() - t_start,
        },
        "optimizers": summarize(records, names),
        "comparisons": comparisons,
        "by_kind": summarize_by_kind(records, names),
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


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise EvalError(f"--limit must be >= 0 (0 = every structure, N = the first N), got {limit}")


def read_structure_dir(path: str | Path, limit: int = 0, calculator: str = "emt",
                       min_distance_factor: float = 0.6, calculator_option: str = "--calculator") -> dict[str, Atoms]:
    """Every structure of a directory's structure files (sorted by name; every frame of multi-frame files).

    Read by :func:`actors.structures.read_structure_source`, the reader `relaxrl train` uses;
    errors advise ``calculator_option`` (eval's ``--calculator``) for another calculator.
    """
    _check_limit(limit)
    d = Path(path)
    if not d.is_dir():
        raise EvalError(f"--structures {d}: not a directory; pass a directory of structure files or 'held-out'")
    return dict(_named(read_structure_source(d, calculator=calculator, min_distance_factor=min_distance_factor,
                                             limit=limit, calculator_option=calculator_option)))


def heldout_structures(cfg: Any, limit: int = 0) -> dict[str, Atoms]:
    """The held-out split of the config's structure source (``curriculum.source``, 'demo' by default)."""
    _check_limit(limit)
    _, held = load_structures(cfg.curriculum.source, cfg.curriculum, cfg.run.seed, calculator=cfg.env.calculator,
                              min_distance_factor=cfg.env.min_distance_factor,
                              calculator_kwargs=cfg.env.calculator_kwargs)
    if limit:
        held = held[:limit]
    if not held:
        raise EvalError(f"the held-out split of {cfg.curriculum.source!r} is empty; raise curriculum.heldout_fraction")
    return dict(_named(held))


def suite_structures(limit: int = 0, calculator: str = "emt", seed: int = SUITE_SEED) -> dict[str, Atoms]:
    """The generalisation suite (:mod:`actors.suite`; ``seed`` :data:`~actors.suite.VALIDATION_SEED`: its
    validation draw); with ``limit`` N, N structures spread over the kinds.

    The N are taken round-robin over the kinds (the first of each kind, then the second, …)
    and kept in suite order, so ``--limit 6`` tries every kind once."""
    _check_limit(limit)
    suite = generalisation_suite(calculator=calculator, seed=seed)
    if limit:
        rank: dict[str, int] = {}
        keyed = []
        for i, a in enumerate(suite):
            k = a.info["kind"]
            rank[k] = rank.get(k, 0) + 1
            keyed.append((rank[k], i))
        keep = sorted(i for _, i in sorted(keyed)[:limit])
        suite = [suite[i] for i in keep]
    if not suite:
        raise EvalError(f"no suite structure has only elements calculator {calculator!r} supports")
    return dict(_named(suite))


def check_out_dir(out: str | Path) -> Path:
    """Raise :class:`EvalError` unless ``out`` is (or can be created as) a writable directory; creates nothing."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise EvalError(f"--out {p} is an existing file; eval writes a directory (report.json, report.md, plots): "
                        "give a directory path")
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EvalError(f"--out {p}: {existing} is a file, so the directory cannot be created; give another path")
    try:
        probe_writable(existing, existing)
    except OSError as e:
        raise EvalError(f"--out {p} cannot be written ({existing}: {e.strerror or e}); choose a writable path") from None
    return p


EVAL_OVERRIDES: dict[str, tuple[str, ...] | None] = {
    "curriculum": None,  # every key: which structures are held out
    "run": ("seed",),
    "env": ("calculator", "calculator_kwargs", "min_distance_factor", "max_step"),
}
"""The config keys `relaxrl eval` uses, so the ones ``--set`` may change (None = the whole section)."""
POLICY_ENV_OVERRIDES = ("min_distance_factor", "max_step")
"""``env`` keys a ``--set`` also applies to the checkpoint's policy (its move correction)."""


def check_overrides(overrides: Sequence[str]) -> list[tuple[str, str, Any]]:
    """Parse ``--set`` overrides, refusing the keys eval does not use (they would be silently ignored)."""
    parsed = []
    for text in overrides:
        section, key, value = parse_override(text)
        allowed = EVAL_OVERRIDES.get(section, ())
        if allowed is not None and key not in allowed:
            hint = {"env.fmax": " (use --fmax)", "env.max_steps": " (use --steps)"}.get(f"{section}.{key}", "")
            raise EvalError(
                f"--set {text}: `relaxrl eval` does not use {section}.{key}{hint}, so the override would be ignored. "
                "eval applies curriculum.* and run.seed (which structures are held out), env.calculator and "
                "env.calculator_kwargs, and env.min_distance_factor and env.max_step (also to the policy's moves)"
            )
        parsed.append((section, key, value))
    return parsed


def eval_config(args: argparse.Namespace, policy: Any) -> Any:
    """The config eval runs under: --config, else the checkpoint's, else the default preset; ``--set`` applied.

    ``env.min_distance_factor`` / ``env.max_step`` overrides also go into ``policy.config`` (in place).
    """
    parsed = check_overrides(args.overrides)
    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif policy is not None:
        data = to_dict(policy.config)
        for section, key, value in parsed:
            data.setdefault(section, {})[key] = value
        cfg = from_dict(data)
    else:
        cfg = load_config(DEFAULT_CONFIG, args.overrides)
    changed = {key: getattr(cfg.env, key) for section, key, _ in parsed
               if section == "env" and key in POLICY_ENV_OVERRIDES}
    if policy is not None and changed:
        policy.config = dataclasses.replace(policy.config, env=dataclasses.replace(policy.config.env, **changed))
    return cfg


def eval_command(args: argparse.Namespace) -> int:
    """`relaxrl eval`: see the module docstring; writes report.json, report.md and plots to --out."""
    # Everything that can fail is checked before the work, cheapest first.
    names = parse_optimizers(args.optimizers)
    check_budget(args.fmax, args.steps)
    _check_limit(args.limit)
    if getattr(args, "hybrid", 0) < 0:
        raise EvalError(f"--hybrid must be >= 0 (0 = the policy alone), got {args.hybrid}")
    if getattr(args, "curvature_check", 0) < 0:
        raise EvalError(f"--curvature-check must be >= 0 (the most free atoms whose Hessian is checked; 0 = off), "
                        f"got {args.curvature_check}")
    out = check_out_dir(args.out)
    check_overrides(args.overrides)
    policy = None
    if args.checkpoint:
        policy = load_policy(args.checkpoint)
    elif "rl" in names:
        raise EvalError("optimizer 'rl' needs --checkpoint CKPT (a checkpoint file or run directory); "
                        "or leave 'rl' out of --optimizers")
    cfg = eval_config(args, policy)

    calc_name, kwargs = resolve_calculator(args.calculator, getattr(args, "calculator_kwargs", None), cfg.env)
    make_calculator(calc_name, kwargs, option="--calculator")  # refused here in eval's terms, before any structure
    if args.structures == "held-out":
        structures = heldout_structures(cfg, args.limit)
    elif args.structures in SUITE_SETS:  # the fixed generalisation suite (actors/suite.py), reported per kind
        structures = suite_structures(args.limit, calc_name, SUITE_SETS[args.structures])
    elif args.structures in ALFE_SETS:  # generated Al–Fe cells (actors/alfe.py), minima cached on disk
        structures = dict(_named(alfe_structure_set(args.structures, args.limit, cfg.run.seed, calc_name, kwargs,
                                                    cfg.env.min_distance_factor)))
    else:
        structures = read_structure_dir(args.structures, args.limit, calculator=calc_name,
                                        min_distance_factor=cfg.env.min_distance_factor)
    report = evaluate(structures, names, fmax=args.fmax, steps=args.steps, calculator=calc_name,
                      calculator_kwargs=kwargs, policy=policy, progress=not getattr(args, "no_progress", False),
                      hybrid_patience=getattr(args, "hybrid", 0), curvature_max_atoms=getattr(args, "curvature_check", 0))
    report["settings"]["structures"] = args.structures
    report["settings"]["checkpoint"] = args.checkpoint
    paths = write_report(report, out)
    print_summary(report)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


# ----------------------------------------------------------------------------- after training

AFTER_TRAINING_OPTIMIZERS = ("rl", "untrained", "bfgs")
"""What `relaxrl train` evaluates when it ends: the trained policy, the untrained one, BFGS (the reference minimum)."""


def heldout_sample(heldout: Sequence[Atoms], n: int, max_atoms: int) -> list[Atoms]:
    """The first ``n`` held-out structures with at most ``max_atoms`` atoms (0 = any size): what the
    after-training evaluation (``run.eval_episodes``) and the live evaluation (``run.eval_sample``) take."""
    return [a for a in heldout if not max_atoms or len(a) <= max_atoms][:n]


def evaluate_after_training(cfg: Any, run_dir: str | Path, heldout: Sequence[Atoms],
                            untrained_weights: dict | None = None, progress: bool = False) -> dict[str, Any]:
    """`relaxrl eval`'s evaluation of a finished run: trained vs untrained policy, and BFGS, on held-out structures.

    Structures: the first ``run.eval_episodes`` held-out structures with at most
    ``run.eval_max_atoms`` atoms (0 = any size). Budget ``env.fmax`` (eV/Å) and
    ``env.max_steps``; calculator ``env.calculator`` with ``env.calculator_kwargs``.
    'rl' is the run's newest checkpoint; 'untrained' the weights the run started from
    (``untrained_weights``) or, for a resumed run, a fresh initialisation with the run's seed.
    A run succeeds as in `relaxrl eval` (converged, within 1 meV/atom of the best minimum any
    of the three reached, not fragmented). Writes eval.json and eval.md in ``run_dir`` (plots
    in ``run_dir/plots/eval_*.png``) with :func:`relaxrl.reports.write_report`; returns the report.
    """
    run_dir = Path(run_dir)
    structures = heldout_sample(heldout, cfg.run.eval_episodes, cfg.run.eval_max_atoms)
    title = "Held-out evaluation after training"
    if not structures:  # nothing to compare: say so in the run directory rather than fail after training
        reason = (f"no held-out structure has at most run.eval_max_atoms = {cfg.run.eval_max_atoms} atoms"
                  if heldout else "the held-out split is empty (curriculum.heldout_fraction)")
        report = {"settings": {"title": title, "n_structures": 0, "skipped": reason}, "optimizers": {},
                  "comparisons": {}, "structures": []}
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        (run_dir / "eval.md").write_text(f"# {title}\n\nNothing evaluated: {reason}.\n")
        return report
    trained = load_policy(run_dir)
    if untrained_weights is None:  # a resumed run: the untrained policy is a fresh initialisation with the run's seed
        torch.manual_seed(cfg.run.seed)
    untrained = Policy(cfg)
    if untrained_weights is not None:
        untrained.load_weights(untrained_weights)
    report = evaluate(structures, AFTER_TRAINING_OPTIMIZERS, fmax=cfg.env.fmax, steps=cfg.env.max_steps,
                      calculator=cfg.env.calculator, calculator_kwargs=cfg.env.calculator_kwargs,
                      policies={"rl": trained, "untrained": untrained}, progress=progress)
    report["settings"].update(
        title=title, structures="held-out", checkpoint=str(run_dir),
        policy_notes={"rl": "trained, the run's newest checkpoint",
                      "untrained": "the weights the run started from" if untrained_weights is not None
                      else "a fresh initialisation with run.seed (resumed run)"})
    write_report(report, run_dir, stem="eval", plot_dir=run_dir / "plots")
    return report


def after_training_line(report: dict[str, Any]) -> str:
    """One line for the end of `relaxrl train`: held-out success of the trained vs the untrained policy."""
    st = report["settings"]
    if not st.get("n_structures"):
        return f"no held-out evaluation ({st.get('skipped', 'no structures')})"
    opts = report["optimizers"]

    def rate(name: str) -> str:
        r = opts.get(name, {}).get("success_rate")
        return "–" if r is None else f"{r:.2f}"

    return (f"held-out success trained {rate('rl')} vs untrained {rate('untrained')} (BFGS {rate('bfgs')}) on "
            f"{st['n_structures']} structures")
