"""`relaxrl eval` on the command line: the structure sets ``--structures`` names, the ``--set``
overrides eval honours, the output directory, and the command itself.

``--structures`` takes ``held-out`` (the held-out split of the config's ``curriculum.source``),
``suite`` / ``suite-val`` (the generalisation suite and its validation draw, actors/suite.py),
``suite-large`` (100–256-atom structures, :func:`actors.suite.large_suite`), an Al–Fe set
(actors/alfe.py), ``crystals`` (17 crystals across chemistry, actors/crystals.py; refused with a
calculator that lacks their elements, such as EMT) or a directory of structure files; or several of them separated by commas
(``suite,suite-val,suite-large``), each relaxed with its own step budget (:data:`SET_STEPS`) and
reported per set and pooled (:func:`relaxrl.evaluate.pool_reports`). Every argument is checked
before any relaxation, cheapest first; bad ones are one :class:`~relaxrl.evaluate.EvalError`
line. The comparison itself is :func:`relaxrl.evaluate.evaluate`.

The calculator (:func:`eval_calculator`): ``--calculator`` / ``--calculator-kwargs`` (or ``--set
env.calculator*``), else the config's. A ``--config`` file and the default preset are the user's; a
checkpoint's config is data, whose calculator is used only when it is built in or with
``--trust-checkpoint-calculator`` (``actors.calculators.refuse_untrusted``). Every structure set is
then loaded and checked with the resolved calculator, never with the one the checkpoint names.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ase import Atoms

from actors.alfe import ALFE_SETS, alfe_structure_set
from actors.calculators import make_calculator, resolve_calculator
from actors.crystals import CrystalsError, crystal_set
from actors.crystals import check_calculator as check_crystals_calculator
from actors.curriculum import load_structures
from actors.structure_files import read_structure_source
from actors.suite import SUITE_SEED, VALIDATION_SEED, generalisation_suite, large_suite
from common.config import MAX_HESSIAN_ATOMS, from_dict, load_config, parse_override, to_dict
from learner.policy import load_policy, untrained_policy
from relaxrl.cli import DEFAULT_CONFIG
from relaxrl.evaluate import (
    CURVATURE_MAX_ATOMS,
    EvalError,
    check_budget,
    check_cell_relaxable,
    check_classical,
    check_gpmin_size,
    evaluate,
    named_structures,
    parse_optimizers,
    pool_reports,
)
from relaxrl.outputs import probe_writable, refuse_dangling_link
from relaxrl.reports import print_summary, write_report

SUITE_SETS = {"suite": SUITE_SEED, "suite-val": VALIDATION_SEED, "suite-large": SUITE_SEED}
"""``--structures`` names of the generalisation suite, of its validation draw (same recipes, other random
draws: for choosing settings without looking at the suite that judges them) and of the large suite, with their seeds."""
SET_STEPS = {"suite": 300, "suite-val": 300, "suite-large": 600, "crystals": 500}
"""Each set's step budget when ``--steps`` is not given (the budgets issue 24's targets are read at)."""
DEFAULT_STEPS = 200
"""The step budget of every other set when ``--steps`` is not given."""


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise EvalError(f"--limit must be >= 0 (0 = every structure, N = the first N), got {limit}")


def read_structure_dir(path: str | Path, limit: int = 0, calculator: str = "emt",
                       min_distance_factor: float = 0.6, calculator_option: str = "--calculator") -> dict[str, Atoms]:
    """Every structure of a directory's structure files (sorted by name; every frame of multi-frame files).

    Read by :func:`actors.structure_files.read_structure_source`, the reader `relaxrl train` uses;
    errors advise ``calculator_option`` (eval's ``--calculator``) for another calculator.
    """
    _check_limit(limit)
    d = Path(path)
    if not d.is_dir():
        raise EvalError(f"--structures {d}: not a directory; pass a directory of structure files or 'held-out'")
    structures = read_structure_source(d, calculator=calculator, min_distance_factor=min_distance_factor, limit=limit,
                                       overlap_advice="lower env.min_distance_factor with --set env.min_distance_factor=X",
                                       calculator_option=calculator_option)
    return dict(named_structures(structures))


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
    return dict(named_structures(held))


def suite_structures(limit: int = 0, calculator: str = "emt", seed: int = SUITE_SEED,
                     large: bool = False) -> dict[str, Atoms]:
    """The generalisation suite (:mod:`actors.suite`; ``seed`` :data:`~actors.suite.VALIDATION_SEED`: its
    validation draw; ``large``: the large suite); with ``limit`` N, N structures spread over the kinds.

    The N are taken round-robin over the kinds (the first of each kind, then the second, …)
    and kept in suite order, so ``--limit 6`` tries every kind once."""
    _check_limit(limit)
    suite = (large_suite if large else generalisation_suite)(calculator=calculator, seed=seed)
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
    return dict(named_structures(suite))


def set_structures(name: str, cfg: Any, limit: int, calculator: str, kwargs: dict | None) -> dict[str, Atoms]:
    """The structures one ``--structures`` item names (module docstring)."""
    if name == "held-out":
        return heldout_structures(cfg, limit)
    if name in SUITE_SETS:  # the fixed generalisation suites (actors/suite.py), reported per kind
        return suite_structures(limit, calculator, SUITE_SETS[name], large=name == "suite-large")
    if name in ALFE_SETS:  # generated Al–Fe cells (actors/alfe.py), minima cached on disk
        return dict(named_structures(alfe_structure_set(name, limit, cfg.run.seed, calculator, kwargs,
                                                        cfg.env.min_distance_factor)))
    if name == "crystals":  # prototypes across chemistry, rattled and strained (actors/crystals.py)
        _check_limit(limit)
        try:
            check_crystals_calculator(calculator)
        except CrystalsError as e:
            raise EvalError(str(e)) from None
        return dict(named_structures(crystal_set(limit=limit)))
    return read_structure_dir(name, limit, calculator=calculator, min_distance_factor=cfg.env.min_distance_factor)


def set_names(text: str) -> list[str]:
    """'suite,suite-val' → ['suite', 'suite-val'] (a name given twice once)."""
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise EvalError("--structures is empty; name a set ('held-out', 'suite', 'suite-val', 'suite-large', ...) "
                        "or a directory of structure files")
    return names


def check_out_dir(out: str | Path) -> Path:
    """Raise :class:`EvalError` unless ``out`` is (or can be created as) a writable directory; creates nothing."""
    p = Path(out)
    refuse_dangling_link("--out", p)
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


def eval_policies(names: Sequence[str], policy: Any, cfg: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The policies ``names`` list and a note on each: 'rl' the checkpoint's, 'untrained' the one a run of the
    checkpoint's config (else of the eval's config: ``--config`` or the default preset) starts from."""
    policies: dict[str, Any] = {}
    notes: dict[str, str] = {}
    if policy is not None:
        policies["rl"] = policy
        notes["rl"] = "the checkpoint's"
    if "untrained" in names:
        base = policy.config if policy is not None else cfg
        policies["untrained"] = untrained_policy(base)
        notes["untrained"] = (f"untrained: the initial weights of a run of config `{base.run.name}` "
                              f"(run.seed {base.run.seed})")
    return policies, notes


def eval_calculator(args: argparse.Namespace, cfg: Any, policy: Any) -> tuple[str, dict]:
    """The calculator and keyword arguments eval uses (see the module docstring); refuses, before anything is
    imported, a calculator that only the checkpoint names and that is not built in."""
    given = {key: value for section, key, value in check_overrides(args.overrides) if section == "env"}
    name = args.calculator or given.get("calculator")
    kwargs_json = getattr(args, "calculator_kwargs", None)
    if kwargs_json is None and "calculator_kwargs" in given:
        kwargs_json = json.dumps(given["calculator_kwargs"])
    from_checkpoint = policy is not None and not args.config  # else the user's --config or the default preset
    source = f"checkpoint {args.checkpoint}" if from_checkpoint else f"config {args.config or DEFAULT_CONFIG}"
    return resolve_calculator(name, kwargs_json, policy.config.env if from_checkpoint else cfg.env, source=source,
                              trust=getattr(args, "trust_checkpoint_calculator", False) or not from_checkpoint)


def eval_command(args: argparse.Namespace) -> int:
    """`relaxrl eval`: :func:`relaxrl.evaluate.evaluate` on the structures --structures names (per set, pooled when
    several); writes report.json, report.md and plots to --out."""
    # Everything that can fail is checked before the work, cheapest first.
    names = parse_optimizers(args.optimizers)
    check_classical(names)
    check_budget(args.fmax, DEFAULT_STEPS if args.steps is None else args.steps)
    _check_limit(args.limit)
    if getattr(args, "hybrid", 0) < 0:
        raise EvalError(f"--hybrid must be >= 0 (0 = the policy alone), got {args.hybrid}")
    curvature = getattr(args, "curvature_check", None)
    curvature = CURVATURE_MAX_ATOMS if curvature is None else curvature
    if not 0 <= curvature <= MAX_HESSIAN_ATOMS:
        raise EvalError(f"--curvature-check must be 0..{MAX_HESSIAN_ATOMS} (the most free atoms whose Hessian is "
                        f"checked; 0 = off), got {curvature}")
    if getattr(args, "trust_checkpoint_calculator", False) and (not args.checkpoint or args.config):
        raise EvalError("--trust-checkpoint-calculator applies to the calculator a --checkpoint names; "
                        + ("with --config the calculator is your config's" if args.checkpoint
                           else "without --checkpoint there is none") + ", so remove it")
    sets = set_names(args.structures)
    out = check_out_dir(args.out)
    check_overrides(args.overrides)
    policy = None
    if args.checkpoint:
        policy = load_policy(args.checkpoint)
    elif "rl" in names:
        raise EvalError("optimizer 'rl' needs --checkpoint CKPT (a checkpoint file or run directory); "
                        "or leave 'rl' out of --optimizers ('untrained' is the untrained policy of --config)")
    cfg = eval_config(args, policy)

    calc_name, kwargs = eval_calculator(args, cfg, policy)
    calc = make_calculator(calc_name, kwargs, option="--calculator")  # refused here in eval's terms, before any structure
    if getattr(args, "relax_cell", False) and "stress" not in getattr(calc, "implemented_properties", ("stress",)):
        raise EvalError(f"--relax-cell needs the stress, and calculator {calc_name!r} does not compute it; use one that "
                        "does (e.g. --calculator chgnet or emt)")
    relax_cell = bool(getattr(args, "relax_cell", False))
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, calculator=calc_name, calculator_kwargs=kwargs))
    structures = {name: set_structures(name, cfg, args.limit, calc_name, kwargs) for name in sets}
    for group in structures.values():
        check_gpmin_size(names, group.items())
        if relax_cell:
            check_cell_relaxable(group.items())
    policies, notes = eval_policies(names, policy, cfg)
    reports = {}
    for name, group in structures.items():
        steps = args.steps if args.steps is not None else SET_STEPS.get(name, DEFAULT_STEPS)
        reports[name] = evaluate(group, names, fmax=args.fmax, steps=steps, calculator=calc_name,
                                 calculator_kwargs=kwargs, policies=policies,
                                 progress=not getattr(args, "no_progress", False),
                                 hybrid_patience=getattr(args, "hybrid", 0), curvature_max_atoms=curvature,
                                 relax_cell=relax_cell)
    report = reports[sets[0]] if len(sets) == 1 else pool_reports(reports)
    report["settings"].update(structures=args.structures, checkpoint=args.checkpoint,
                              policy_notes={k: v for k, v in notes.items() if k in names})
    paths = write_report(report, out)
    print_summary(report)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0
