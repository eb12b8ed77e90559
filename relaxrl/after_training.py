"""The evaluation that ends `relaxrl train`: the trained policy ('rl'), the run's untrained
policy ('untrained') and BFGS (the reference minimum) on the held-out structures, judged as
`relaxrl eval` judges (:func:`relaxrl.evaluate.evaluate`) and written with the same report
writer as ``eval.json`` / ``eval.md`` in the run directory.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from ase import Atoms

from learner.policy import Policy, load_policy
from relaxrl.evaluate import evaluate
from relaxrl.reports import write_report

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
