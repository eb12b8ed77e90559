"""Live evaluation while training: the real objective (held-out success, force calls vs BFGS) as the run goes.

    live = LiveEval.for_run(cfg, heldout)        # the fixed sample; BFGS relaxes it once (the reference)
    row = live.maybe(updates, actor_weights)      # {} unless updates is a multiple of run.eval_every (or in run.eval_early)
    # row: {"eval/success": 0.75, "eval/force_calls_vs_bfgs": 1.1, "eval/n_both_solved": 3, "eval/time_s": 0.8}

Every ``run.eval_every`` updates (and at the updates of ``run.eval_early``) the current actor relaxes the
run's sample greedily (the policy's own displacement, no exploration noise:
:class:`~relaxrl.optimizer.RLOptimizer`) with at most ``env.max_steps`` steps each. The sample is the first
``run.eval_sample`` held-out structures with at most ``run.eval_max_atoms`` atoms and the first
``run.eval_sample_large`` structures of the large suite (600 steps each, as `relaxrl eval --structures
suite-large`), the same for the whole run. Small cells leave a good policy little room (one force call is a
few per cent of the ratio); the large ones show what a learned model Hessian gains while it learns. Each
relaxation is :func:`relaxrl.evaluate.run_one` (with eval's default saddle check) and is judged by `relaxrl
eval`'s rule (:func:`relaxrl.evaluate.judge`: converged, not fragmented, not on a saddle point, within 1
meV/atom of the reference minimum), BFGS being the classical optimizer whose minima are the reference; its
runs are computed once when the run starts and reused. ``eval/success`` is the share of the judged
structures solved (those where BFGS reached a minimum; NaN when there are none).
``eval/force_calls_vs_bfgs`` is the mean force calls of the actor over those of BFGS on the structures both
solved (NaN, written as null, when there are none), so the numbers are those
:func:`relaxrl.evaluate.evaluate` would report for ``["rl", "bfgs"]`` on the sample. Every row also carries
the same two numbers for the run's untrained policy (``eval/untrained_*``, computed once at the start): the
curve's starting level.

With the learner's critic (``maybe(..., critic=...)``) the same actor also relaxes the sample
through the training environment (:class:`~actors.env.RelaxEnv`, its rewards), and the row gets
``eval/q``, the mean Q1(s_t, π(s_t)) of those steps, and ``eval/return``, the mean observed
discounted return-to-go G_t = Σ_k γ^k r_{t+k} of the *same* steps (``learner.gamma``; pooled over
the sample's steps): what the critic estimates next to what happened, for the policy it is the
critic of. A truncated episode has no bootstrap tail, so its G_t is a lower estimate.

With a ``log_path`` (a run's ``live_eval.jsonl``) every evaluation also appends one line per policy
evaluated: ``{"updates": u, "policy": "rl" | "untrained", "structures": [{"name", "n_atoms",
"force_calls", "bfgs_force_calls", "success", "saddle"}, ...]}``, the untrained policy's once at the
start (updates 0). The metrics rows pool the sample; this file says which structures a change of
the curve comes from (``relaxrl.training_report`` draws it per structure).

It runs in the learner's process between two updates, and its wall time (``eval/time_s``) is time
the learner does not update: keep the sample small.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from actors.env import RelaxEnv
from actors.loop import returns_to_go
from actors.rollout import run_episode
from learner.graph import batch_graphs, stack_rows
from learner.policy import Policy, untrained_policy
from relaxrl.after_training import heldout_sample, large_eval_sample
from relaxrl.eval_cli import SET_STEPS
from relaxrl.evaluate import (
    CURVATURE_MAX_ATOMS,
    ENERGY_TOL_EV_PER_ATOM,
    calculator_factory,
    judge,
    run_one,
    summarize_by_kind,
)

log = logging.getLogger("relaxrl.train")

KEYS = ("eval/success", "eval/force_calls_vs_bfgs", "eval/n_both_solved", "eval/time_s")
"""The metrics.jsonl keys of one live evaluation."""
CRITIC_KEYS = ("eval/q", "eval/return")
"""The keys it adds when it is given the critic."""
UNTRAINED_KEYS = ("eval/untrained_force_calls_vs_bfgs", "eval/untrained_success")
"""The run's untrained policy on the same sample (computed once, when the run starts), in every row of
:meth:`LiveEval.maybe`: the level the curve is read against, since a learned model Hessian can gain most of
what it gains before the first evaluation."""


class LiveEval:
    """Greedy evaluation of a run's current actor on a fixed sample, every ``every`` updates.

    Args:
        config: the run's ``RunConfig`` (the policy's networks and move correction; ``env.fmax``,
            ``env.max_steps``, ``env.calculator``).
        structures: the sample (see :func:`relaxrl.after_training.heldout_sample`); BFGS relaxes each once, here.
        every: evaluate at updates that are multiples of this (0 = never).
        steps: the step budget of each structure (default ``env.max_steps`` for all).
        early: more updates to evaluate at (``run.eval_early``).
        log_path: a JSON-lines file to append each evaluation's per-structure results to (module docstring).
    """

    def __init__(self, config: Any, structures: Sequence[Atoms], every: int, steps: Sequence[int] | None = None,
                 early: Sequence[int] = (), log_path: str | Path | None = None) -> None:
        self.config, self.every, self.early = config, every, frozenset(int(u) for u in early)
        self.log_path = Path(log_path) if log_path is not None else None
        self.structures = [a.copy() for a in structures]
        self.steps = [config.env.max_steps] * len(self.structures) if steps is None else [int(n) for n in steps]
        if len(self.steps) != len(self.structures):
            raise ValueError(f"LiveEval: {len(self.steps)} step budgets for {len(self.structures)} structures")
        self.last: dict[str, float] = {}
        """The newest evaluation's row (empty before the first)."""
        if not (every and self.structures):
            self.every = 0
            return
        env = config.env
        self._calc = calculator_factory(env.calculator, env.calculator_kwargs)
        self.bfgs = [run_one("bfgs", a, self._calc, env.fmax, n, curvature_max_atoms=CURVATURE_MAX_ATOMS,
                             relax_cell=env.relax_cell) for a, n in zip(self.structures, self.steps, strict=True)]
        """BFGS's run on each structure: the reference minimum and its force calls."""
        with torch.random.fork_rng(devices=[]):  # building the network must not move the run's random stream
            self.policy = Policy(config)
        row = self.evaluate(untrained_policy(config))
        self._log(0, "untrained")
        self.untrained = {"eval/untrained_force_calls_vs_bfgs": row["eval/force_calls_vs_bfgs"],
                          "eval/untrained_success": row["eval/success"]}
        """The untrained policy's evaluation (:data:`UNTRAINED_KEYS`), added to each row of :meth:`maybe`."""
        self.last = {}

    @classmethod
    def for_run(cls, config: Any, heldout: Sequence[Atoms], log_path: str | Path | None = None) -> LiveEval:
        """The live evaluation of a run (``run.eval_every``, ``run.eval_sample``, ``run.eval_max_atoms``,
        ``run.eval_sample_large``).

        Without a structure to evaluate it is off, with a warning: training goes on as it would without it."""
        r = config.run
        sample = heldout_sample(heldout, r.eval_sample, r.eval_max_atoms) if r.eval_every else []
        large = large_eval_sample(config, r.eval_sample_large) if r.eval_every else []
        if r.eval_every and not sample and not large:
            log.warning("run.eval_every = %d but no held-out structure has at most run.eval_max_atoms = %d atoms: "
                        "no live evaluation", r.eval_every, r.eval_max_atoms)
        steps = [config.env.max_steps] * len(sample) + [SET_STEPS["suite-large"]] * len(large)
        return cls(config, sample + large, r.eval_every, steps, early=r.eval_early, log_path=log_path)

    def due(self, updates: int) -> bool:
        """At every multiple of ``run.eval_every`` and at each update of ``run.eval_early``."""
        return bool(self.every) and updates > 0 and (updates % self.every == 0 or updates in self.early)

    def maybe(self, updates: int, weights: Callable[[], dict], critic: torch.nn.Module | None = None) -> dict[str, float]:
        """The evaluation's row when ``updates`` is due (``weights()`` gives the actor's state dict), else {}.
        With ``critic`` (the learner's) the row also compares Q with the observed return (module docstring)."""
        if not self.due(updates):
            return {}
        self.policy.load_weights(weights(), version=updates)
        row = self.evaluate(self.policy, critic)
        self._log(updates, "rl")
        self.last.update(self.untrained)
        return {**row, **self.untrained}

    def q_and_return(self, policy: Any, critic: torch.nn.Module) -> dict[str, float]:
        """``eval/q`` and ``eval/return`` of ``policy``'s greedy steps on the sample (module docstring)."""
        cfg = self.config
        env = RelaxEnv(cfg.env)
        param = next(critic.parameters())
        q1 = critic.q1 if hasattr(critic, "q1") else (lambda g, a: critic(g, a)[0])
        qs: list[float] = []
        gs: list[float] = []
        for atoms in self.structures:
            trace: list = []
            run_episode(env, policy.act, atoms, trace)
            if not trace:  # converged at the start: no step to judge
                continue
            graph = batch_graphs([o for o, _, _ in trace], cfg.network, device=param.device, dtype=param.dtype,
                                 env_input_dim=cfg.env.env_input_dim)
            rows = stack_rows([a for _, a, _ in trace], [o.n_atoms for o, _, _ in trace])  # the batch's row order
            action = torch.as_tensor(rows, device=param.device, dtype=param.dtype)
            with torch.no_grad():
                qs += q1(graph, action).reshape(-1).double().cpu().tolist()
            gs += returns_to_go([r for _, _, r in trace], cfg.learner.gamma)
        if not qs:
            return {k: math.nan for k in CRITIC_KEYS}
        return {"eval/q": float(np.mean(qs)), "eval/return": float(np.mean(gs))}

    def evaluate(self, policy: Any, critic: torch.nn.Module | None = None) -> dict[str, float]:
        """Relax the sample with ``policy`` (greedy) and judge it against the cached BFGS runs;
        with ``critic``, also Q against the observed return of the same steps."""
        env = self.config.env
        t0 = time.perf_counter()
        records = []
        for i, (atoms, bfgs, steps) in enumerate(zip(self.structures, self.bfgs, self.steps, strict=True)):
            rl = run_one("rl", atoms, self._calc, env.fmax, steps, policy=policy,
                         curvature_max_atoms=CURVATURE_MAX_ATOMS, relax_cell=env.relax_cell)
            records.append({"name": f"{i:03d}-{atoms.get_chemical_formula()}", "n_atoms": len(atoms),
                            "runs": {"rl": rl, "bfgs": copy.deepcopy(bfgs)}})
        judge(records, ENERGY_TOL_EV_PER_ATOM)  # relaxrl eval's success definition
        overall = summarize_by_kind(records, ("rl", "bfgs"))["overall"]
        ratio = overall["rl_vs_bfgs_force_calls"]
        self.last = {
            "eval/success": _nan_if_none(overall["optimizers"]["rl"]["success_rate"]),
            "eval/force_calls_vs_bfgs": _nan_if_none(ratio["ratio"]),
            "eval/n_both_solved": ratio["n_both_solved"],
        }
        if critic is not None:
            was_training = critic.training
            critic.eval()
            try:
                self.last.update(self.q_and_return(policy, critic))
            finally:
                critic.train(was_training)
        self.last["eval/time_s"] = round(time.perf_counter() - t0, 3)
        self.records = records
        """The newest evaluation's structure records, as in `relaxrl eval`'s report."""
        return dict(self.last)

    def per_structure(self) -> list[dict[str, Any]]:
        """The newest evaluation per structure: name, atoms, the policy's and BFGS's force calls, success, saddle."""
        return [{"name": s["name"], "n_atoms": s["n_atoms"], "force_calls": s["runs"]["rl"]["force_calls"],
                 "bfgs_force_calls": s["runs"]["bfgs"]["force_calls"], "success": bool(s["runs"]["rl"].get("success")),
                 "saddle": bool(s["runs"]["rl"].get("saddle"))} for s in self.records]

    def _log(self, updates: int, policy: str) -> None:
        """Append the newest evaluation's :meth:`per_structure` to ``log_path`` (nothing without one)."""
        if self.log_path is None:
            return
        line = json.dumps({"updates": int(updates), "policy": policy, "structures": self.per_structure()})
        with self.log_path.open("a") as f:
            f.write(line + "\n")


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else float(value)


def progress_field(row: dict[str, Any]) -> str | None:
    """'eval 0.75 @1.1×BFGS' (success, force calls vs BFGS) for the progress line; None before the first evaluation."""
    success = row.get("eval/success")
    if not isinstance(success, (int, float)):
        return None
    if not math.isfinite(success):  # no structure of the sample judged (BFGS reached no minimum)
        return "eval –"
    ratio = row.get("eval/force_calls_vs_bfgs")
    if isinstance(ratio, (int, float)) and math.isfinite(ratio):
        return f"eval {success:.2f} @{ratio:.2g}×BFGS"
    return f"eval {success:.2f}"
