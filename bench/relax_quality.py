"""How the RL policy relaxes the generalisation suite compared with ASE's optimizers; prints one JSON object.

    python bench/relax_quality.py [--structures suite|suite-val|suite-large|held-out] [--quick] [--checkpoint CKPT]
                                  [--hybrid K] [--config configs/demo.toml]

Runs :func:`relaxrl.evaluate.evaluate` on the generalisation suite (:mod:`actors.suite`, the
default), its validation draw, the large suite or the held-out split of the demo config (or of the
checkpoint's config) with rl and ASE's optimizers (bfgs, bfgsls, lbfgs, fire, precon, goqn; gpmin on
request, at most 20 atoms), same calculator, fmax and step budget for all (the set's budget of
`relaxrl eval` unless ``--steps``), judged by `relaxrl eval`'s rule (the classical optimizers' minima
are the reference; eval's default saddle check). Prints per optimizer the success rate and
median/mean force calls, and
``rl_vs_bfgs_force_calls`` / ``rl_vs_fire_force_calls``: the ratio of mean force calls on the
structures both solved (below 1 = the policy needs fewer calls); ``by_kind`` gives success
per optimizer and those two ratios per structure kind and overall. Without ``--checkpoint`` the
policy is the untrained one of the config (:func:`learner.policy.untrained_policy`: the weights a
run of it starts from), and the JSON says so. ``--teachers newton,compliance`` also runs the expert
teachers of :mod:`actors.expert` alone through :class:`~actors.env.RelaxEnv` (their Hessians are not counted,
so these are bounds a one-call-per-step optimizer could reach with an exact Hessian, not
competitors), judged by the same rule: converged count, success, and force calls relative to BFGS's
where both converged. ``--curvature-check N`` sets the saddle check's size limit (0 = off).
``--quick`` keeps 6 structures: one per suite kind, or for held-out 6 spanning
the sizes (< 40 s on a laptop CPU for held-out).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from actors.env import RelaxEnv  # noqa: E402
from actors.expert import make_teacher  # noqa: E402
from actors.hessian import curvature_if_small  # noqa: E402
from actors.rollout import run_episode  # noqa: E402
from common.config import MAX_HESSIAN_ATOMS, ExpertConfig, load_config  # noqa: E402
from learner.policy import load_policy, untrained_policy  # noqa: E402
from relaxrl.eval_cli import DEFAULT_STEPS, SET_STEPS, SUITE_SETS, set_structures  # noqa: E402
from relaxrl.evaluate import (  # noqa: E402
    CURVATURE_MAX_ATOMS,
    calculator_factory,
    evaluate,
    fragment_count,
    judge,
)

# ASE's optimizers on EMT systems relative to BFGS, from the issue: for orientation only.
REFERENCE_VS_BFGS = {"fire": [2.1, 2.5], "bfgsls": [0.45, 0.59], "gpmin": [0.43, 0.52]}
TEACHER_RUN = "teacher"  # the teacher's run among the optimizers' when it is judged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--structures", choices=(*SUITE_SETS, "held-out"), default="suite",
                   help="the generalisation suite (27 structures of 6 kinds; default), its validation draw "
                        "(same recipes, other random draws), the large suite or the config's held-out split")
    p.add_argument("--quick", action="store_true",
                   help="6 structures (one per suite kind, or held-out ones spanning the sizes), at most 150 steps")
    p.add_argument("--checkpoint", default=None, help="checkpoint file or run directory (default: untrained policy)")
    p.add_argument("--config", default=None, help="structure source (default: the checkpoint's config, else configs/demo.toml)")
    p.add_argument("--hybrid", type=int, default=0, metavar="K", help="rl hands over to BFGS after K steps without progress")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=None, help="default: the set's budget in relaxrl eval (300, 600, 200)")
    p.add_argument("--optimizers", default="rl,bfgs,bfgsls,lbfgs,fire,precon,goqn")
    p.add_argument("--teachers", default="", help="also run these expert teachers alone: newton, compliance, bfgsls, model-hessian")
    p.add_argument("--curvature-check", type=int, default=CURVATURE_MAX_ATOMS, metavar="N",
                   help="a converged run on at most N free atoms that ended on a saddle point is no success "
                        "(as relaxrl eval; 0 = off)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    if args.checkpoint:
        policy = load_policy(args.checkpoint)
        policy_note = f"trained checkpoint {policy_path(args.checkpoint)} (weights version {policy.version})"
    else:
        cfg = load_config(args.config or ROOT / "configs" / "demo.toml")
        policy = untrained_policy(cfg)
        policy_note = (f"untrained policy of config '{cfg.run.name}' (no --checkpoint: the weights a run of it starts "
                       "from), so rl numbers are the prior training has to beat, not a result")
    cfg = load_config(args.config) if args.config else policy.config
    steps = args.steps or SET_STEPS.get(args.structures, DEFAULT_STEPS)
    quick = 6 if args.quick and args.structures in SUITE_SETS else 0
    structures = set_structures(args.structures, cfg, quick, cfg.env.calculator, cfg.env.calculator_kwargs)
    if args.structures in SUITE_SETS:
        steps = min(steps, 150) if args.quick else steps
        source = f"{args.structures} (actors/suite.py, seed {SUITE_SETS[args.structures]})"
    else:
        source = f"held-out split of config '{cfg.run.name}' (source {cfg.curriculum.source!r})"
    if args.quick and args.structures == "held-out":
        by_size = sorted(structures.items(), key=lambda kv: (len(kv[1]), kv[0]))
        picks = sorted({round(k * (len(by_size) - 1) / 5) for k in range(6)})  # 6 structures spanning the sizes
        structures = dict(by_size[k] for k in picks)
        steps = min(steps, 150)
    extra = {"untrained": untrained_policy(policy.config)} if "untrained" in args.optimizers.split(",") else {}
    report = evaluate(structures, args.optimizers, fmax=args.fmax, steps=steps, calculator=cfg.env.calculator,
                      calculator_kwargs=cfg.env.calculator_kwargs, policy=policy, policies=extra, progress=False,
                      hybrid_patience=args.hybrid, curvature_max_atoms=args.curvature_check)

    comps = report["comparisons"]
    out = {
        "benchmark": "relax_quality",
        "policy": policy_note,
        "trained": bool(args.checkpoint),
        "hybrid_patience": args.hybrid,
        "structures": source,
        "n_structures": len(structures),
        "atoms_per_structure": sorted(len(a) for a in structures.values()),
        "fmax_ev_per_a": args.fmax,
        "steps": steps,
        "calculator": cfg.env.calculator,
        "optimizers": {
            name: {"success_rate": o["success_rate"], "force_calls_median": o["force_calls"]["median"],
                   "force_calls_mean": o["force_calls"]["mean"], "force_calls_mean_solved": o["force_calls_solved"]["mean"],
                   "n_higher_minimum": o["n_higher_minimum"], "n_saddle": o["n_saddle"],
                   "n_curvature_checked": o["n_curvature_checked"],
                   "wall_time_s": round(o["wall_time_s"]["total"], 3)}
            for name, o in report["optimizers"].items()
        },
        "rl_vs_bfgs_force_calls": comps.get("rl_vs_bfgs_force_calls", {}).get("ratio"),
        "rl_vs_fire_force_calls": comps.get("rl_vs_fire_force_calls", {}).get("ratio"),
        "rl_vs_bfgs_n_both_solved": comps.get("rl_vs_bfgs_force_calls", {}).get("n_both_solved"),
        "vs_bfgs_force_calls": {k.removesuffix("_vs_bfgs_force_calls"): v["ratio"] for k, v in comps.items()
                                if k.endswith("_vs_bfgs_force_calls") and not k.startswith("rl_")},
        "by_kind": {kind: {"n_structures": e["n_structures"],
                           "success_rate": {n: o["success_rate"] for n, o in e["optimizers"].items()},
                           **{k: e[k]["ratio"] for k in ("rl_vs_bfgs_force_calls", "rl_vs_fire_force_calls") if k in e},
                           **{f"{k.removesuffix('_force_calls')}_n_both_solved": e[k]["n_both_solved"]
                              for k in ("rl_vs_bfgs_force_calls", "rl_vs_fire_force_calls") if k in e}}
                    for kind, e in report["by_kind"].items()},
        "reference_vs_bfgs_on_emt": REFERENCE_VS_BFGS,
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    if args.teachers:
        out["teachers"] = {name: teacher_runs(name, structures, report, policy.config, steps)
                           for name in args.teachers.split(",")}
    if args.hybrid and "rl" in report["optimizers"]:
        rl_runs = [s["runs"]["rl"].get("rl", {}) for s in report["structures"]]
        out["hybrid_handed_over"] = sum(r.get("finished_by") == "bfgs" for r in rl_runs)
        out["hybrid_rl_steps_mean"] = sum(r.get("steps_rl", 0) for r in rl_runs) / max(len(rl_runs), 1)
    print(json.dumps(out))
    return 0


def teacher_runs(name: str, structures: dict, report: dict, cfg, steps: int,
                 build: Callable[[RelaxEnv], Any] | None = None) -> dict:
    """Expert teacher ``name`` alone through RelaxEnv on every structure: converged, force calls vs BFGS,
    and success by ``relaxrl eval``'s rule (converged, not fragmented, not on a saddle point where the
    eval's curvature check reaches, within the energy tolerance of the classical optimizers' reference
    minimum, which the teacher, like a policy, does not move). ``missed`` names the structures the teacher did
    not solve, ``lower_than_every_optimizer`` those where it found a minimum below the reference. ``build(env)``,
    when given, builds the teacher instead (bench/head_ceiling.py's variants)."""
    env = RelaxEnv(dataclasses.replace(cfg.env, max_steps=steps))
    teacher = build(env) if build is not None else make_teacher(
        ExpertConfig(teacher=name, teacher_max_atoms=MAX_HESSIAN_ATOMS, teacher_min_curvature=
                     cfg.expert.teacher_min_curvature if name in ("compliance", "model-hessian") else 0.5),
        env, cfg.env.max_step, cfg.network)
    calc = calculator_factory(cfg.env.calculator, cfg.env.calculator_kwargs)
    records = {s["name"]: s for s in report["structures"]}
    tol = report["settings"]["energy_tol_ev_per_atom"]
    max_atoms = report["settings"]["curvature_max_atoms"]
    converged, solved, deeper, missed, pairs = 0, 0, [], [], []
    for sname, atoms in structures.items():
        teacher.reset()
        fragments0 = fragment_count(atoms)
        res = run_episode(env, teacher.action, atoms)  # env.max_steps = steps
        converged += res["converged"]
        s = records[sname]
        b = s["runs"].get("bfgs")
        curvature = curvature_if_small(env.atoms, calc, max_atoms) if res["converged"] and max_atoms else None
        # judged by relaxrl eval's own rule, beside copies of the optimizers' runs (theirs stay as judged)
        beside = {**s, "runs": {**copy.deepcopy(s["runs"]), TEACHER_RUN: {
            "converged": res["converged"], "error": res["error"], "energy": res["energy_final"],
            "fragments_initial": fragments0, "fragments_final": fragment_count(env.atoms),
            "lowest_curvature_ev_per_a2": curvature}}}
        judge([beside], tol)
        run = beside["runs"][TEACHER_RUN]
        if run["success"]:
            solved += 1
            if run["below_reference"]:
                deeper.append(sname)
        else:
            missed.append(sname)
        if res["converged"] and b is not None and b["converged"]:
            pairs.append((res["force_calls"], b["force_calls"]))
    ratio = sum(p[0] for p in pairs) / sum(p[1] for p in pairs) if pairs else None
    return {"converged": converged, "success": solved, "n_structures": len(structures),
            "missed": missed, "lower_than_every_optimizer": deeper, "force_calls_vs_bfgs": ratio,
            "n_both_converged": len(pairs), "teacher_force_calls_not_counted": teacher.force_calls}


def policy_path(text: str) -> str:
    from learner.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(text))


if __name__ == "__main__":
    sys.exit(main())
