"""Writing what `relaxrl eval` found: report.json, report.md and PNG plots (matplotlib, Agg).

    paths = write_report(report, "eval-out")   # report from relaxrl.evaluate.evaluate()
    print_summary(report)                      # a short table on stdout (rich)

The evaluation after training uses the same writer with ``stem="eval"`` (eval.json, eval.md
in the run directory, plots in its plots/ folder).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

FMAX_PLOT_STRUCTURES = 4
"""Structures shown in fmax_vs_step.png (the first ones of the report)."""


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN/inf → None so that report.json is strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def markdown(report: dict[str, Any], plots: tuple[str, str] = ("force_calls.png", "fmax_vs_step.png")) -> str:
    """The report as Markdown: settings, one row per optimizer, one row per structure.

    ``plots``: the force-call and Fmax plot files, relative to the Markdown file.
    """
    lines = _settings_markdown(report)
    lines += _optimizers_markdown(report)
    lines += by_set_markdown(report)
    lines += by_kind_markdown(report)
    lines += _structures_markdown(report)
    lines += ["", f"Plots: `{plots[0]}` (distribution per optimizer), `{plots[1]}` (a few structures).", ""]
    return "\n".join(lines)


def _settings_markdown(report: dict[str, Any]) -> list[str]:
    """The title and what the eval ran: budget, success rule, unjudged structures, policies, hybrid mode and the
    curvature check."""
    st = report["settings"]
    names = st["optimizers"]
    steps = st["steps"]
    budget = (", ".join(f"{k} {v}" for k, v in steps.items()) if isinstance(steps, dict) else str(steps))
    lines = [
        f"# {st.get('title') or 'relaxrl eval'}",
        "",
        f"{st['n_structures']} structures, calculator `{st['calculator']}`, fmax {st['fmax']} eV/Å, "
        f"at most {budget} steps. A success converged, did not fall apart, did not end on a saddle point "
        f"(where checked) and ended at most {1e3 * st['energy_tol_ev_per_atom']:.1f} meV/atom above the structure's "
        "reference minimum: the lowest minimum a classical optimizer of this eval reached (the policies' runs do not "
        "move it). Force calls count every calculator evaluation.",
        "",
    ]
    unjudged = [_label(s) for s in report["structures"] if not s.get("judged", True)]
    if unjudged:
        lines += [f"Unjudged (no classical optimizer reached a minimum, so no reference; left out of every success "
                  f"rate): {', '.join(unjudged)}.", ""]
    policies = st.get("policies") or ({"rl": st["policy"]} if st.get("policy") else {})
    for name, info in policies.items():
        note = (st.get("policy_notes") or {}).get(name, "")
        lines += [f"Policy `{name}`: config `{info['config_name']}`, weights version {info['version']}"
                  f"{f' ({note})' if note else ''}.", ""]
    if st.get("hybrid_patience") and "rl" in names:
        handed = sum(1 for s in report["structures"] if (s["runs"]["rl"].get("rl") or {}).get("finished_by") == "bfgs")
        lines += [f"Hybrid mode: `rl` hands over to BFGS after {st['hybrid_patience']} policy steps without a new lowest "
                  f"Fmax; it did on {handed} of {len(report['structures'])} structures (marked `+bfgs`); its force "
                  "calls include the BFGS part.", ""]
    if st.get("curvature_max_atoms"):
        lines += [f"Curvature check: every converged run on a structure of at most {st['curvature_max_atoms']} free atoms "
                  "got the lowest eigenvalue of its finite-difference Hessian"
                  + (" over the cell filter's rows, atoms and cell," if st.get("relax_cell") else "")
                  + " (force calls not counted); below "
                  f"−{st.get('saddle_curvature_ev_per_a2')} eV/Å²"
                  + (f", confirmed by the energy's second difference along that mode over ±{st['saddle_confirm_step']} "
                     "(a rough surface can dip on the finite differences' scale alone)," if st.get("saddle_confirm_step")
                     else "")
                  + " it ended on a saddle point (column `saddle`, mark ⋈): "
                  "not a success and not a reference. Larger structures are not checked.", ""]
    else:
        lines += ["No curvature check (`--curvature-check 0`): a run that ended on a saddle point counts as a minimum.", ""]
    return lines


def _optimizers_markdown(report: dict[str, Any]) -> list[str]:
    """One row per optimizer (success, force calls, failure kinds, wall time split at the calculator), then the
    force-call and wall-time ratios on the structures both optimizers solved."""
    st = report["settings"]
    lines = [
        "| optimizer | success (of judged) | force calls median | mean | p90 | mean (solved) | higher minimum "
        "| below reference | saddle | fragmented | errors | wall time s | in calculator s | optimizer s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in st["optimizers"]:
        o = report["optimizers"][n]
        fc, fs = o["force_calls"], o["force_calls_solved"]
        lines.append(
            f"| {n} | {_success(o)} | {_fmt(fc['median'])} | "
            f"{_fmt(fc['mean'])} | {_fmt(fc['p90'])} | {_fmt(fs['mean'])} | {o['n_higher_minimum']} | "
            f"{o.get('n_below_reference', 0)} | "
            f"{o.get('n_saddle', 0) if o.get('n_curvature_checked') else '–'} | "
            f"{o['n_fragmented']} | {o['n_errors']} | {_fmt(o['wall_time_s']['total'], 2)} | "
            f"{_fmt(o.get('calc_time_s', {}).get('total'), 2)} | {_fmt(o.get('optimizer_time_s', {}).get('total'), 2)} |")
    lines += ["", "Wall time is split at the calculator: `in calculator` is the time inside it, `optimizer` the rest "
              "(for a policy: building its observation, the network's inference and the move's correction)."]
    if st.get("relax_cell"):
        lines += ["", "Cell relaxation (`--relax-cell`): every optimizer ran on `FrechetCellFilter(atoms)`; Fmax is the "
                  "filter's generalised force (atom rows and cell rows)."]
    if report["comparisons"]:
        lines += ["", "Ratio of the means on the structures both solved (`_force_calls`: force calls; `_wall_time`: "
                  "wall time):", ""]
        for k, v in report["comparisons"].items():
            lines.append(f"- `{k}`: {_fmt(v['ratio'], 2)} (on {v['n_both_solved']} structures)")
    return lines


def _structures_markdown(report: dict[str, Any]) -> list[str]:
    """The per-structure table: force calls of every optimizer with a mark for how a run failed, and RL/BFGS."""
    names = report["settings"]["optimizers"]
    lines = ["", "## Per structure", "",
             "Force calls per optimizer (✗ = not a success; ↑ = higher minimum; ↓ = a minimum below the reference; "
             "✂ = fragmented; ⋈ = converged on a saddle point; ? = unjudged structure).", ""]
    header = "| structure | atoms | " + " | ".join(names) + (" | RL/BFGS |" if "rl" in names and "bfgs" in names else " |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for s in report["structures"]:
        cells = []
        for n in names:
            r = s["runs"][n]
            mark = (" ?" if not s.get("judged", True) else " ↓" if r.get("below_reference") else "" if r["success"]
                    else " ↑" if r["higher_minimum"] else " ✂" if r["fragmented"] else " ✗")
            if r.get("saddle"):
                mark += " ⋈"
            if (r.get("rl") or {}).get("finished_by") == "bfgs":
                mark += " +bfgs"
            cells.append(f"{r['force_calls']}{mark}")
        row = f"| {_label(s)} | {s['n_atoms']} | " + " | ".join(cells)
        row += f" | {_fmt(s['rl_over_bfgs_force_calls'], 2)} |" if "rl" in names and "bfgs" in names else " |"
        lines.append(row)
    return lines


def _label(s: dict[str, Any]) -> str:
    """A structure's name, prefixed by its set in a pooled report (suite and suite-val share names)."""
    return f"{s['set']}/{s['name']}" if "set" in s else s["name"]


def _success(o: dict[str, Any]) -> str:
    """'25/27 (93 %)': successes of the judged structures (and how many runs were unjudged)."""
    judged = o.get("n_judged", o["n_runs"])
    text = f"{o['n_success']}/{judged} ({_fmt(100 * (o['success_rate'] or 0), 0)} %)"
    return text + (f", {o['n_runs'] - judged} unjudged" if judged != o["n_runs"] else "")


def by_set_markdown(report: dict[str, Any]) -> list[str]:
    """The per-set table of a pooled report (:func:`relaxrl.evaluate.pool_reports`): success and mean force calls
    per optimizer in each set and pooled, or nothing."""
    by_set = report.get("by_set") or {}
    if not by_set:
        return []
    names = report["settings"]["optimizers"]
    header = "| optimizer | " + " | ".join(f"{k} ({e['n_structures']})" for k, e in by_set.items()) + " |"
    lines = ["", "## Per set", "",
             "Success of the judged structures, then mean force calls over every run · over the solved ones.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for n in names:
        cells = [f"{_success(o)}; {_fmt(o['force_calls_mean'])} · {_fmt(o['force_calls_mean_solved'])}"
                 for o in (e["optimizers"][n] for e in by_set.values())]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def by_kind_markdown(report: dict[str, Any]) -> list[str]:
    """The per-kind table (success per optimizer, rl/bfgs and rl/fire force-call ratios), or nothing.

    Shown when the structures have more than one kind (the suite); a plain directory is all 'file'."""
    by_kind = report.get("by_kind") or {}
    if len(by_kind) <= 2:  # one kind and 'overall': the table above says it all
        return []
    names = report["settings"]["optimizers"]
    ratios = [k for k in ("rl_vs_bfgs_force_calls", "rl_vs_fire_force_calls") if k in by_kind["overall"]]
    header = "| kind | structures | " + " | ".join(f"{n} success" for n in names)
    header += "".join(f" | {k.removesuffix('_force_calls').replace('_vs_', '/')} calls" for k in ratios) + " |"
    lines = ["", "## Per kind", "",
             "Success per optimizer; force-call ratio = mean force calls on the structures both solved "
             "(in how many).", "", header, "|" + "---|" * (header.count("|") - 1)]
    for kind, e in by_kind.items():
        cells = [f"{o['n_success']}/{o.get('n_judged', o['n_runs'])}" for o in (e["optimizers"][n] for n in names)]
        cells += [f"{_fmt(e[k]['ratio'], 2)} ({e[k]['n_both_solved']})" for k in ratios]
        label = f"**{kind}**" if kind == "overall" else kind
        lines.append(f"| {label} | {e['n_structures']} | " + " | ".join(cells) + " |")
    return lines


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), for every plot of relaxrl."""
    # matplotlib (about 0.9 s to import) is loaded by the plots only; the backend is chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use, see above

    return plt


def plot_force_calls(report: dict[str, Any], path: Path) -> Path:
    """Box plot with the individual runs of force calls per optimizer (failures as crosses)."""
    plt = pyplot()

    names = report["settings"]["optimizers"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 4.0))
    data = [[s["runs"][n]["force_calls"] for s in report["structures"]] for n in names]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for k, n in enumerate(names, start=1):
        ok = [s["runs"][n] for s in report["structures"]]
        xs = k + rng.uniform(-0.15, 0.15, len(ok))
        for x, r in zip(xs, ok):
            ax.plot(x, r["force_calls"], "o" if r["success"] else "x", color="C0" if r["success"] else "C3",
                    ms=4, alpha=0.8)
    ax.set_ylabel("force calls per structure")
    ax.set_title(f"force calls to Fmax < {report['settings']['fmax']} eV/Å (x = not a success)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fmax_traces(report: dict[str, Any], path: Path, n: int = FMAX_PLOT_STRUCTURES) -> Path:
    """Fmax (eV/Å, log scale) against step for the first ``n`` structures, one line per optimizer."""
    plt = pyplot()

    structs = report["structures"][:n]
    names = report["settings"]["optimizers"]
    cols = min(len(structs), 2) or 1
    rows = max(1, math.ceil(len(structs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.4 * rows), squeeze=False)
    for ax, s in zip(axes.flat, structs):
        for k, name in enumerate(names):
            trace = s["runs"][name].get("fmax_trace") or []
            if trace:
                ax.semilogy(range(len(trace)), trace, label=name, color=f"C{k}")
        ax.axhline(report["settings"]["fmax"], color="k", ls="--", lw=0.8)
        ax.set_title(f"{_label(s)} ({s['n_atoms']} atoms)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("Fmax (eV/Å)")
    for ax in list(axes.flat)[len(structs):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path, stem: str = "report",
                 plot_dir: str | Path | None = None) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and two PNG plots in ``out_dir`` (created).

    The plots are ``force_calls.png`` and ``fmax_vs_step.png`` in ``out_dir``, or with
    ``plot_dir`` ``<stem>_force_calls.png`` and ``<stem>_fmax_vs_step.png`` there.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if plot_dir is None:
        plot_paths = (out / "force_calls.png", out / "fmax_vs_step.png")
    else:
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        plot_paths = (Path(plot_dir) / f"{stem}_force_calls.png", Path(plot_dir) / f"{stem}_fmax_vs_step.png")
    rel = tuple(Path(os.path.relpath(p, out)).as_posix() for p in plot_paths)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(_clean(report), indent=1, default=_json_default, allow_nan=False))
    paths[1].write_text(markdown(report, plots=rel))  # type: ignore[arg-type]
    paths.append(plot_force_calls(report, plot_paths[0]))
    paths.append(plot_fmax_traces(report, plot_paths[1]))
    return paths


def print_summary(report: dict[str, Any]) -> None:
    """Per-optimizer table on stdout."""
    t = Table(title=f"relaxrl eval: {report['settings']['n_structures']} structures, fmax {report['settings']['fmax']} eV/Å")
    for col in ("optimizer", "success", "calls median", "calls mean", "calls p90", "wall s", "calc s", "opt s"):
        t.add_column(col, justify="right" if col != "optimizer" else "left")
    for n, o in report["optimizers"].items():
        fc = o["force_calls"]
        t.add_row(n, _success(o), _fmt(fc["median"]), _fmt(fc["mean"]), _fmt(fc["p90"]),
                  _fmt(o["wall_time_s"]["total"], 2), _fmt(o.get("calc_time_s", {}).get("total"), 2),
                  _fmt(o.get("optimizer_time_s", {}).get("total"), 2))
    Console().print(t)
    for k, v in report["comparisons"].items():
        print(f"{k}: {_fmt(v['ratio'], 2)} (on {v['n_both_solved']} structures both solved)")
    by_kind = report.get("by_kind") or {}
    if len(by_kind) > 2:
        for kind, e in by_kind.items():
            succ = ", ".join(f"{n} {o['n_success']}/{o.get('n_judged', o['n_runs'])}" for n, o in e["optimizers"].items())
            rat = "".join(f"; {k.removesuffix('_force_calls')} {_fmt(e[k]['ratio'], 2)}"
                          for k in ("rl_vs_bfgs_force_calls", "rl_vs_fire_force_calls") if k in e)
            print(f"{kind}: success {succ}{rat}")
    for name, e in (report.get("by_set") or {}).items():
        print(f"{name}: " + "; ".join(f"{n} {_success(o)} at {_fmt(o['force_calls_mean'])} calls"
                                     for n, o in e["optimizers"].items()))
