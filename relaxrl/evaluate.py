"""The evaluation behind `relaxrl eval`: the trained policy against ASE's optimizers on the same structures.

    report = evaluate(structures, ["rl", "bfgs", "fire"], fmax=0.05, steps=200,
                      calculator="emt", policy=policy)
    write_report(report, "eval-out")          # report.json, report.md, PNG plots

Every optimizer gets the same structures (fresh copies), the same calculator (a fresh
instance per run, wrapped in :class:`~relaxrl.optimizer.CountingCalculator` so that every
real calculation is counted once and cached repeats are not), the same ``fmax`` (eV/Å)
and the same step budget. With ``relax_cell`` every optimizer, the policies included, runs on
``FrechetCellFilter(atoms)`` (atoms and cell, as materials scientists relax crystals), ``fmax`` is the
filter's generalised force (ASE's convergence test on the filter: atom rows and cell rows) and each
calculation also gives the stress.

Wall time is split at the calculator: ``calc_time_s`` is the time spent inside it (measured by
:class:`~relaxrl.optimizer.CountingCalculator`), ``optimizer_time_s`` the rest of the run's wall time,
the optimizer's own work (for a policy: observing, the network's inference, the correction).

Every run is judged by one rule (:func:`judge`). A structure's *reference minimum* is the
lowest final energy of the *classical* optimizers' runs on it (:data:`CLASSICAL_OPTIMIZERS`: ASE's) that
converged, did not fall apart and did not end on a saddle point; a policy's runs ('rl', 'untrained', any
other policy) never move it, so a policy is judged against the same bar whatever it finds. A run is a
*success* when it converged (Fmax < fmax within the budget), did not fall apart (no more connected
fragments at the end than at the start, bonds judged at 1.5 × ASE's natural cutoffs), did not end on a
saddle point, and its final energy is at most ``energy_tol`` (1 meV/atom) above the reference. A run
below the reference by more than that is a success too, flagged ``below_reference``; runs that
converge into a higher minimum are flagged ``higher_minimum``. A structure on which no classical
optimizer reached a minimum has no reference: it is *unjudged*, none of its runs is a success, and
success rates count judged structures only (``n_judged``; ``n_unjudged`` says how many were left out).
An evaluation needs at least one classical optimizer.

Fmax < fmax holds at saddle points too. Every converged run on a structure of at most
``curvature_max_atoms`` free atoms (:data:`CURVATURE_MAX_ATOMS` = 40 by default; ``relaxrl eval
--curvature-check N``, 0 = off) gets the lowest eigenvalue of the finite-difference Hessian over its
free coordinates (``lowest_curvature_ev_per_a2``; 6 force calls per free atom on a separate
calculator, never counted as the optimizer's; with ``relax_cell`` over ``FrechetCellFilter``'s
rows, atoms and cell, 18 calls more, so a cell stopped at an elastic instability is a saddle too);
below −:data:`SADDLE_CURVATURE_EV_PER_A2`, and confirmed by the energy's second difference along that
mode over ±:data:`~actors.hessian.CONFIRM_STEP` (:func:`~actors.hessian.lowest_curvature`: a machine-learned
potential's surface can dip on the finite differences' scale at a true minimum), the run ended on a saddle
point (``saddle``): not a success, and not a reference. Larger structures are not
checked, so there a saddle counts as a minimum.

The command line (`relaxrl eval`: which structures ``--structures`` names, ``--set``, ``--out``)
is :mod:`relaxrl.eval_cli`; the evaluation that ends `relaxrl train` is :mod:`relaxrl.after_training`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.neighborlist import natural_cutoffs, neighbor_list
from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, GoodOldQuasiNewton, GPMin
from ase.optimize.precon import Exp, PreconLBFGS
from ase.optimize.precon.neighbors import estimate_nearest_neighbour_distance
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from actors.calculators import make_calculator
from actors.hessian import CONFIRM_STEP, SADDLE_CURVATURE_EV_PER_A2, curvature_if_small, is_saddle
from actors.structure_check import check_structure, policy_overlap_advice
from common.errors import RelaxRLError
from relaxrl.optimizer import CountingCalculator, PolicyDivergedError, RLOptimizer

POLICY_OPTIMIZERS = ("rl", "untrained")
"""Policy optimizers `relaxrl eval` knows: 'rl' the checkpoint's policy, 'untrained' the policy its run started from."""
CLASSICAL_OPTIMIZERS = ("bfgs", "bfgsls", "lbfgs", "fire", "gpmin", "precon", "goqn")
"""ASE's optimizers: their converged minima are the reference every run is judged against (:func:`judge`)."""
OPTIMIZERS = POLICY_OPTIMIZERS + CLASSICAL_OPTIMIZERS
"""Optimizer names `relaxrl eval` knows; the policies need one (a checkpoint or a config)."""
ENERGY_TOL_EV_PER_ATOM = 1e-3
"""A converged run more than this above the reference minimum (eV/atom) is not a success."""
FRAGMENT_CUTOFF_MULT = 1.5
"""Bonds for the fragmentation check: distance < this × (natural cutoff i + natural cutoff j)."""
CURVATURE_MAX_ATOMS = 40
"""Default size limit (free atoms) of the saddle check: every structure of the suite and its validation draw."""
GPMIN_MAX_ATOMS = 20
"""GPMin keeps every geometry's energy and forces in one Gaussian-process matrix of ((3N + 1) × steps)² numbers:
above this many atoms it is refused (on the suite's 40-atom clusters it passed 6 GB and ran for most of an hour)."""


class EvalError(RelaxRLError):
    """Bad arguments to `relaxrl eval` (unknown optimizer, no structures, missing checkpoint)."""


# ----------------------------------------------------------------------------- optimizers


def nearest_neighbour_distance(atoms: Atoms) -> float:
    """r_NN of ASE's preconditioners: the largest of the atoms' nearest-neighbour distances (Å).

    ASE's own estimate grows its cutoff only up to twice the cell's extent, so on a free cluster or
    molecule (no cell) it raises "increased r_cut to twice system extent"; then the same quantity is
    found with the positions' extent as the bound."""
    try:
        return float(estimate_nearest_neighbour_distance(atoms))
    except RuntimeError:
        pass
    n = len(atoms)
    extent = float(np.ptp(atoms.positions, axis=0).max()) if n else 0.0
    cutoff = 1.0
    while cutoff < 2.0 * extent + 2.0:
        i, d = neighbor_list("id", atoms, cutoff)
        if len(i) and (np.bincount(i, minlength=n) > 0).all():
            return float(max(d[i == k].min() for k in range(n)))
        cutoff *= (1.0 + math.sqrt(5.0)) / 2.0
    return 1.0  # a single atom, or atoms too far apart to have neighbours: nothing for the preconditioner to couple


def exp_preconditioner(atoms: Atoms) -> Any:
    """A fresh ``Exp(A=3)`` for ``atoms`` with r_NN from :func:`nearest_neighbour_distance` (r_cut = 2 r_NN, ASE's
    default). One per run: an Exp keeps the r_NN, r_cut and μ it found on its first structure."""
    return Exp(A=3.0, r_NN=nearest_neighbour_distance(atoms))


def _ase_optimizer(name: str, atoms: Atoms) -> Any:
    if name == "precon":
        return PreconLBFGS(atoms, precon=exp_preconditioner(getattr(atoms, "atoms", atoms)), logfile=None)
    cls = {"bfgs": BFGS, "bfgsls": BFGSLineSearch, "lbfgs": LBFGS, "fire": FIRE, "gpmin": GPMin,
           "goqn": GoodOldQuasiNewton}[name]
    return cls(atoms, logfile=None)


def parse_optimizers(text: str | Sequence[str], policies: Iterable[str] = ()) -> list[str]:
    """'rl,bfgs,fire' → ['rl', 'bfgs', 'fire'], rejecting unknown names with the list of valid ones.

    ``policies``: further names that are policies, valid besides :data:`OPTIMIZERS`.
    """
    valid = list(OPTIMIZERS) + [p for p in policies if p not in OPTIMIZERS]
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise EvalError(f"unknown optimizer(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(valid)}")
    return list(dict.fromkeys(names))


def is_classical(name: str) -> bool:
    """Whether optimizer ``name`` is one of ASE's (:data:`CLASSICAL_OPTIMIZERS`), not a policy."""
    return name in CLASSICAL_OPTIMIZERS


def check_classical(names: Sequence[str]) -> None:
    """Raise :class:`EvalError` unless ``names`` hold a classical optimizer (the reference minimum comes from them)."""
    if not any(is_classical(n) for n in names):
        raise EvalError(f"--optimizers {','.join(names)} has no classical optimizer, and the reference minimum every run "
                        f"is judged against comes from theirs: add one of {', '.join(CLASSICAL_OPTIMIZERS)} (e.g. bfgs)")


def check_gpmin_size(names: Sequence[str], structures: Iterable[tuple[str, Atoms]]) -> None:
    """Raise :class:`EvalError` when 'gpmin' would run on a structure of more than :data:`GPMIN_MAX_ATOMS` atoms."""
    if "gpmin" not in names:
        return
    big = [(name, len(a)) for name, a in structures if len(a) > GPMIN_MAX_ATOMS]
    if big:
        raise EvalError(f"gpmin keeps every step's forces in one Gaussian-process matrix and runs out of memory on "
                        f"large cells ({big[0][0]}: {big[0][1]} atoms; at most {GPMIN_MAX_ATOMS}): leave gpmin out "
                        "of --optimizers for these structures")


def make_optimizer(name: str, atoms: Atoms, policy: Any = None, hybrid_patience: int = 0):
    """An optimizer of this name on ``atoms`` (an Atoms or a cell filter of one), with no logfile: one of ASE's, or
    an RLOptimizer of ``policy``. The structure is not checked here, so no policy's wall time holds the check: the
    callers check every structure before any run (:func:`evaluate` with each policy's factor, the live eval's
    curriculum with the run's)."""
    if is_classical(name):
        return _ase_optimizer(name, atoms)
    if policy is None:
        raise EvalError(f"optimizer {name!r} needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
    return RLOptimizer(atoms, policy=policy, logfile=None, hybrid_patience=hybrid_patience, check=False)


def check_cell_relaxable(structures: Iterable[tuple[str, Atoms]]) -> None:
    """Raise :class:`EvalError` naming the first structure that is not periodic in all three directions (--relax-cell)."""
    for name, a in structures:
        if not a.pbc.all():
            raise EvalError(f"--relax-cell relaxes cells, but structure {name!r} is not periodic in all three directions "
                            f"(pbc {a.pbc.tolist()}); evaluate it without --relax-cell")


# ----------------------------------------------------------------------------- one run


def fragment_count(atoms: Atoms, mult: float = FRAGMENT_CUTOFF_MULT) -> int:
    """Connected fragments of the bond graph (bond: d < mult × sum of natural cutoffs), periodic images included."""
    n = len(atoms)
    if n == 0:
        return 0
    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def run_one(name: str, atoms: Atoms, calculator: Callable[[], Any], fmax: float, steps: int,
            policy: Any = None, hybrid_patience: int = 0, curvature_max_atoms: int = 0,
            relax_cell: bool = False) -> dict[str, Any]:
    """Relax a copy of ``atoms`` with optimizer ``name``; counts, energies, timing and the Fmax trace.

    With ``relax_cell`` the optimizer runs on ``FrechetCellFilter`` of the copy and Fmax is the filter's
    generalised force. With ``curvature_max_atoms`` > 0, a converged run on at most that many free atoms also
    gets ``lowest_curvature_ev_per_a2`` (:func:`lowest_curvature`, a fresh calculator, not counted; over the cell
    filter's rows, atoms and cell, with ``relax_cell``)."""
    a = atoms.copy()
    calc = CountingCalculator(calculator(), stress=relax_cell)
    a.calc = calc
    target = FrechetCellFilter(a) if relax_cell else a  # what the optimizer moves; its forces are what fmax tests

    def row_fmax() -> float:  # the calculator's cached results at the current geometry: no new call
        return float(np.linalg.norm(target.get_forces(), axis=1).max())

    record: dict[str, Any] = {"optimizer": name, "converged": False, "steps": 0, "force_calls": 0,
                              "fmax": math.nan, "energy": math.nan, "energy_initial": math.nan,
                              "wall_time_s": 0.0, "calc_time_s": 0.0, "optimizer_time_s": 0.0, "error": None,
                              "fmax_trace": []}
    t0 = time.perf_counter()
    try:
        fragments0 = fragment_count(a)
        opt = make_optimizer(name, target, policy=policy, hybrid_patience=hybrid_patience)
        trace: list[float] = record["fmax_trace"]
        # Observers run after the optimizer evaluated the new geometry, so these reads are cached.
        opt.attach(lambda: trace.append(row_fmax()))
        record["energy_initial"] = float(a.get_potential_energy())
        converged = bool(opt.run(fmax=fmax, steps=steps))
        record.update(
            converged=converged,
            steps=int(opt.nsteps),
            fmax=row_fmax(),
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
    record["calc_time_s"] = float(calc.seconds)
    record["optimizer_time_s"] = max(record["wall_time_s"] - record["calc_time_s"], 0.0)
    record["force_calls"] = int(calc.calls)
    record["lowest_curvature_ev_per_a2"] = None
    if curvature_max_atoms > 0 and record["converged"]:
        value = curvature_if_small(a, calculator, curvature_max_atoms, cell=relax_cell)
        record["lowest_curvature_ev_per_a2"] = value if value is not None and math.isfinite(value) else None
    return record


# ----------------------------------------------------------------------------- statistics


def _stats(values: Iterable[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "mean": None, "p90": None, "min": None, "max": None}
    return {"n": int(v.size), "median": float(np.median(v)), "mean": float(v.mean()),
            "p90": float(np.percentile(v, 90)), "min": float(v.min()), "max": float(v.max())}


def _reaches_a_minimum(r: dict[str, Any]) -> bool:
    """A converged, error-free run that neither fell apart nor ended on a saddle point (as far as checked)."""
    return bool(r["converged"] and r["error"] is None and math.isfinite(r["energy"])
                and r.get("fragments_final", 1) <= r.get("fragments_initial", 1)
                and not is_saddle(r.get("lowest_curvature_ev_per_a2")))


def judge(structures: list[dict[str, Any]], energy_tol: float) -> None:
    """The success rule (module docstring), in place. Per structure: ``reference_energy`` (eV; nan when no
    classical optimizer reached a minimum), ``reference_optimizer``, ``judged``. Per run:
    ``energy_above_reference_mev_per_atom``, ``fragmented``, ``saddle``, ``higher_minimum``,
    ``below_reference``, ``success``."""
    for s in structures:
        runs = s["runs"]
        minima = {name: r["energy"] for name, r in runs.items() if is_classical(name) and _reaches_a_minimum(r)}
        reference_by = min(minima, key=minima.__getitem__) if minima else None
        reference = minima[reference_by] if reference_by is not None else math.nan
        s.update(reference_energy=reference, reference_optimizer=reference_by, judged=reference_by is not None)
        for r in runs.values():
            above = (r["energy"] - reference) / s["n_atoms"] if s["judged"] and math.isfinite(r["energy"]) else math.nan
            r["energy_above_reference_mev_per_atom"] = 1e3 * above if math.isfinite(above) else None
            r["fragmented"] = bool(r.get("fragments_final", 1) > r.get("fragments_initial", 1))
            r["saddle"] = bool(r["converged"] and is_saddle(r.get("lowest_curvature_ev_per_a2")))
            minimum = _reaches_a_minimum(r) and math.isfinite(above)
            r["higher_minimum"] = bool(minimum and above > energy_tol)
            r["below_reference"] = bool(minimum and above < -energy_tol)
            r["success"] = bool(minimum and above <= energy_tol)
        rl, bfgs = runs.get("rl"), runs.get("bfgs")
        s["rl_over_bfgs_force_calls"] = (rl["force_calls"] / bfgs["force_calls"]
                                         if rl is not None and bfgs is not None and bfgs["force_calls"] else None)


def ratio_on_both_solved(structures: list[dict[str, Any]], a: str, b: str, key: str = "force_calls") -> dict[str, Any]:
    """Mean ``key`` (force calls, or e.g. wall_time_s) of ``a`` over the mean of ``b`` on the structures both solved."""
    pairs = [(s["runs"][a].get(key, 0.0), s["runs"][b].get(key, 0.0)) for s in structures
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
        n_judged = sum(bool(s.get("judged", True)) for s in structures if name in s["runs"])
        solved = [r for r in runs if r["success"]]
        out[name] = {
            "n_runs": len(runs),
            "n_judged": n_judged,
            "n_unjudged": len(runs) - n_judged,
            "n_success": len(solved),
            "success_rate": len(solved) / n_judged if n_judged else None,
            "n_converged": sum(r["converged"] for r in runs),
            "n_higher_minimum": sum(r["higher_minimum"] for r in runs),
            "n_below_reference": sum(r["below_reference"] for r in runs),
            "n_saddle": sum(r["saddle"] for r in runs),
            "n_curvature_checked": sum(r.get("lowest_curvature_ev_per_a2") is not None for r in runs),
            "n_fragmented": sum(r["fragmented"] for r in runs),
            "n_errors": sum(r["error"] is not None for r in runs),
            "force_calls": _stats(r["force_calls"] for r in runs),
            "force_calls_solved": _stats(r["force_calls"] for r in solved),
            "steps": _stats(r["steps"] for r in runs),
            "energy_above_reference_mev_per_atom": _stats(r["energy_above_reference_mev_per_atom"] for r in runs),
            "wall_time_s": {"total": float(sum(r["wall_time_s"] for r in runs)),
                            "mean": float(np.mean([r["wall_time_s"] for r in runs])) if runs else None},
            # the wall time split at the calculator (module docstring)
            "calc_time_s": {"total": float(sum(r.get("calc_time_s", 0.0) for r in runs))},
            "optimizer_time_s": {"total": float(sum(r.get("optimizer_time_s", 0.0) for r in runs))},
        }
    return out


def summarize_by_kind(structures: list[dict[str, Any]], optimizers: Sequence[str]) -> dict[str, Any]:
    """Success and force-call ratios per structure kind (``record["kind"]``) and ``"overall"``.

    Each entry: ``n_structures``; per optimizer ``n_runs``, ``n_judged``, ``n_success``, ``success_rate``; and
    ``rl_vs_bfgs_force_calls`` / ``rl_vs_fire_force_calls`` (:func:`ratio_on_both_solved`) where
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
            entry["optimizers"][name] = {k: agg[k] for k in ("n_runs", "n_judged", "n_success", "success_rate")}
        for other in ("bfgs", "fire"):
            if "rl" in optimizers and other in optimizers:
                entry[f"rl_vs_{other}_force_calls"] = ratio_on_both_solved(group, "rl", other)
        out[kind] = entry
    return out


# ----------------------------------------------------------------------------- evaluate


def named_structures(structures: Sequence[Atoms] | Mapping[str, Atoms]) -> list[tuple[str, Atoms]]:
    """(name, atoms) pairs with unique names: a mapping's keys, else ``atoms.info["name"]`` (or index and formula);
    a repeated name gets ``#2``, ``#3``, ... (names key the report)."""
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
    optimizers: Sequence[str] | str = ("rl",) + CLASSICAL_OPTIMIZERS,
    fmax: float = 0.05,
    steps: int = 200,
    calculator: str | Callable[[], Any] = "emt",
    policy: Any = None,
    progress: bool = True,
    calculator_kwargs: dict | None = None,
    energy_tol: float = ENERGY_TOL_EV_PER_ATOM,
    hybrid_patience: int = 0,
    policies: Mapping[str, Any] | None = None,
    curvature_max_atoms: int = CURVATURE_MAX_ATOMS,
    relax_cell: bool = False,
) -> dict[str, Any]:
    """Relax every structure with every optimizer and compare (see the module docstring).

    ``relax_cell``: every optimizer on ``FrechetCellFilter`` (atoms and cell); the structures must be periodic.

    ``policy`` is the policy of optimizer 'rl'; ``policies`` names further policies that
    ``optimizers`` may list (e.g. ``{"untrained": p}``), each run as an RLOptimizer.
    ``optimizers`` must hold a classical one (the reference minimum). ``curvature_max_atoms``: the
    saddle check's size limit in free atoms (0 = off; module docstring).

    Returns a JSON-able dict (:func:`build_report`): ``settings``, ``optimizers`` (per-optimizer aggregates),
    ``structures`` (per-structure runs, with the Fmax trace of each run), ``comparisons``
    (each policy 'rl', 'untrained' vs BFGS, FIRE and the other policy: ``rl_vs_fire_force_calls``,
    ``rl_vs_fire_wall_time``, ...; and every optimizer vs BFGS: the ratio of the means of force calls, or of
    wall time, on the structures both solved),
    ``by_kind`` (:func:`summarize_by_kind`: success and rl/bfgs, rl/fire ratios per
    ``atoms.info["kind"]``, 'file' where unset, and overall).
    """
    by_name, names, named = _check_request(structures, optimizers, policy, policies, fmax, steps, relax_cell)
    check_policy_structures(named, [by_name[n] for n in names if not is_classical(n)], calculator)
    make_calc = calculator_factory(calculator, calculator_kwargs)
    t_start = time.perf_counter()
    records = _relax_all(named, names, by_name, make_calc, fmax, steps, progress,
                         hybrid_patience=hybrid_patience, curvature_max_atoms=curvature_max_atoms, relax_cell=relax_cell)
    judge(records, energy_tol)
    policy_info = _policy_info(by_name, names)
    settings = {
        "fmax": fmax, "steps": steps, "energy_tol_ev_per_atom": energy_tol,
        "calculator": calculator if isinstance(calculator, str) else getattr(calculator, "__name__", repr(calculator)),
        "hybrid_patience": hybrid_patience, "curvature_max_atoms": curvature_max_atoms, "relax_cell": relax_cell,
        "saddle_curvature_ev_per_a2": SADDLE_CURVATURE_EV_PER_A2, "saddle_confirm_step": CONFIRM_STEP,
        "policy": policy_info.get("rl"), "policies": policy_info, "wall_time_s": time.perf_counter() - t_start,
    }
    return build_report(records, names, settings)


def check_policy_structures(named: Sequence[tuple[str, Atoms]], policies: Sequence[Any],
                            calculator: str | Callable[[], Any]) -> None:
    """Every structure checked as RLOptimizer checks it (``actors.structure_check.check_structure``, the rule of
    `relaxrl relax`) with each policy's ``env.min_distance_factor``, once before any run:
    :class:`~actors.structure_check.StructureError` names the first structure a policy cannot start from."""
    for factor in sorted({float(p.config.env.min_distance_factor) for p in policies}):
        for sname, atoms in named:
            check_structure(atoms, sname, calculator=calculator if isinstance(calculator, str) else None,
                            min_distance_factor=factor, calculator_option="--calculator",
                            overlap_advice=policy_overlap_advice(factor))


def _check_request(structures: Sequence[Atoms] | Mapping[str, Atoms], optimizers: Sequence[str] | str, policy: Any,
                   policies: Mapping[str, Any] | None, fmax: float, steps: int,
                   relax_cell: bool) -> tuple[dict[str, Any], list[str], list[tuple[str, Atoms]]]:
    """What :func:`evaluate` runs, checked before any run: the policies by optimizer name, the optimizer names
    and the named structures (:class:`EvalError` for a request that cannot be judged or run)."""
    by_name = dict(policies or {})
    if policy is not None:
        by_name["rl"] = policy
    names = parse_optimizers(optimizers, by_name)
    check_classical(names)
    check_budget(fmax, steps)
    missing = [n for n in names if n not in by_name and not is_classical(n)]
    if missing:
        raise EvalError(f"optimizer {missing[0]!r} needs a policy: pass --checkpoint CKPT (or policy= to evaluate())")
    named = named_structures(structures)
    if not named:
        raise EvalError("no structures to evaluate")
    check_gpmin_size(names, named)
    if relax_cell:
        check_cell_relaxable(named)
    return by_name, names, named


def _relax_all(named: list[tuple[str, Atoms]], names: list[str], by_name: Mapping[str, Any],
               make_calc: Callable[[], Any], fmax: float, steps: int, progress: bool, **run_kwargs: Any) -> list[dict[str, Any]]:
    """One record per structure (name, kind, formula, size, periodicity) with the run of every optimizer
    (:func:`run_one` with ``run_kwargs``), not yet judged."""
    records: list[dict[str, Any]] = []
    with _progress(progress, len(named) * len(names)) as advance:
        for sname, atoms in named:
            s = {"name": sname, "kind": str(atoms.info.get("kind", "file")), "formula": atoms.get_chemical_formula(),
                 "n_atoms": len(atoms), "periodic": bool(atoms.pbc.any()), "runs": {}}
            for opt in names:
                advance(f"{sname} · {opt}")
                s["runs"][opt] = run_one(opt, atoms, make_calc, fmax, steps, policy=by_name.get(opt), **run_kwargs)
            records.append(s)
        advance(None)
    return records


def _policy_info(by_name: Mapping[str, Any], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """What the report says of each policy that ran: its version, the run's name and seed, and the env settings
    its moves depend on."""
    return {n: {"version": getattr(p, "version", None), "config_name": p.config.run.name,
                "seed": p.config.run.seed, "max_step": p.config.env.max_step,
                "min_distance_factor": p.config.env.min_distance_factor}
            for n, p in by_name.items() if n in names}


def build_report(records: list[dict[str, Any]], names: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The report of judged structure records: ``settings``, ``optimizers``, ``comparisons``, ``by_kind``,
    ``structures`` (:func:`evaluate`)."""
    comparisons: dict[str, Any] = {}
    for policy in (n for n in POLICY_OPTIMIZERS if n in names):  # each policy against BFGS, FIRE, the untrained start
        for other in ("bfgs", "fire", "untrained"):
            if other in names and other != policy:
                comparisons[f"{policy}_vs_{other}_force_calls"] = ratio_on_both_solved(records, policy, other)
                comparisons[f"{policy}_vs_{other}_wall_time"] = ratio_on_both_solved(records, policy, other,
                                                                                      "wall_time_s")
    if "bfgs" in names:
        for opt in names:
            if opt != "bfgs" and f"{opt}_vs_bfgs_force_calls" not in comparisons:
                comparisons[f"{opt}_vs_bfgs_force_calls"] = ratio_on_both_solved(records, opt, "bfgs")
    return {
        "settings": {**settings, "optimizers": list(names), "n_structures": len(records),
                     "n_judged": sum(bool(s.get("judged", True)) for s in records)},
        "optimizers": summarize(records, names),
        "comparisons": comparisons,
        "by_kind": summarize_by_kind(records, names),
        "structures": records,
    }


POOLED = "pooled"
"""The ``by_set`` entry over every set of a pooled report."""


def pool_reports(reports: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One report over several sets' reports (``{set name: report}``, each from :func:`evaluate` with the same
    optimizers): their structures together (each record gets ``set``), aggregates over all of them, and
    ``by_set``: per set and :data:`POOLED`, per optimizer ``n_runs``, ``n_judged``, ``n_success``,
    ``success_rate``, ``force_calls_mean`` (over every run) and ``force_calls_mean_solved``. ``settings.steps``
    is then a dict per set (each set keeps its own budget)."""
    if not reports:
        raise EvalError("no structure sets to pool")
    first = next(iter(reports.values()))["settings"]
    names = first["optimizers"]
    if any(r["settings"]["optimizers"] != names for r in reports.values()):
        raise EvalError("pooled reports must compare the same optimizers")
    records = []
    for set_name, report in reports.items():
        for s in report["structures"]:
            records.append({**s, "set": set_name})
    settings = {**first, "steps": {k: r["settings"]["steps"] for k, r in reports.items()},
                "sets": list(reports), "wall_time_s": sum(r["settings"]["wall_time_s"] for r in reports.values())}
    pooled = build_report(records, names, settings)
    groups = {k: [s for s in records if s["set"] == k] for k in reports}
    groups[POOLED] = records
    pooled["by_set"] = {k: {"n_structures": len(group), "optimizers": {
        name: {"n_runs": agg["n_runs"], "n_judged": agg["n_judged"], "n_success": agg["n_success"],
               "success_rate": agg["success_rate"], "force_calls_mean": agg["force_calls"]["mean"],
               "force_calls_mean_solved": agg["force_calls_solved"]["mean"]}
        for name, agg in summarize(group, names).items()}} for k, group in groups.items()}
    return pooled


class _progress:
    """A rich progress bar (or nothing): ``with _progress(on, total) as advance: advance('label')``."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self._bar: Any = None
        self._started = False

    def __enter__(self) -> Callable[[str | None], None]:
        if self.enabled:
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
