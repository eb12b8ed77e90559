"""The live evaluation during training: same numbers as `relaxrl eval`, BFGS computed once, a fixed sample."""
from __future__ import annotations

import math
import re

import pytest
import torch
from ase.calculators.emt import EMT
from ase.optimize import BFGS

from common.config import ConfigError, load_config
from helpers import cu_cluster
from learner.policy import Policy
from relaxrl.after_training import heldout_sample
from relaxrl.evaluate import evaluate
from relaxrl.live_eval import KEYS, UNTRAINED_KEYS, LiveEval, progress_field

TINY = ["network.channels=8", "network.num_layers=2", "env.max_steps=40"]


def two_structures():
    """A rattled Cu5 cluster (the fresh policy will not relax it) and a Cu4 cluster BFGS already relaxed
    (every optimizer converges at its first force call: both solve it, so the ratio exists)."""
    relaxed = cu_cluster(4, seed=1)
    relaxed.calc = EMT()
    BFGS(relaxed, logfile=None).run(fmax=0.01, steps=200)
    relaxed.calc = None
    return [cu_cluster(5, seed=2), relaxed]


def test_live_eval_equals_evaluate_on_two_emt_structures():
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    policy = Policy(cfg)  # freshly initialised
    structures = two_structures()
    live = LiveEval(cfg, structures, every=20)
    assert [r["optimizer"] for r in live.bfgs] == ["bfgs", "bfgs"] and all(r["converged"] for r in live.bfgs)

    assert live.maybe(19, policy.weights) == {} and live.last == {}
    row = live.maybe(20, policy.weights)
    assert set(row) == set(KEYS) | set(UNTRAINED_KEYS) and live.last == row and live.policy.version == 20

    report = evaluate(structures, ["rl", "bfgs"], fmax=cfg.env.fmax, steps=cfg.env.max_steps,
                      calculator=cfg.env.calculator, policy=policy, progress=False)
    assert row["eval/success"] == report["optimizers"]["rl"]["success_rate"]
    both = report["comparisons"]["rl_vs_bfgs_force_calls"]
    assert row["eval/n_both_solved"] == both["n_both_solved"] >= 1  # the relaxed Cu4
    assert row["eval/force_calls_vs_bfgs"] == pytest.approx(both["ratio"])
    for mine, theirs in zip(live.records, report["structures"], strict=True):  # run by run, the same relaxations
        for opt in ("rl", "bfgs"):
            a, b = mine["runs"][opt], theirs["runs"][opt]
            assert (a["force_calls"], a["steps"], a["converged"], a["success"], a["error"]) == \
                   (b["force_calls"], b["steps"], b["converged"], b["success"], b["error"])
            assert a["energy"] == pytest.approx(b["energy"], abs=1e-9, nan_ok=True)
    assert 0.0 <= row["eval/success"] <= 1.0 and row["eval/time_s"] > 0.0

    # the untrained policy's numbers on the same sample, as relaxrl eval gives them, in every row
    from learner.policy import untrained_policy
    base = evaluate(structures, ["rl", "bfgs"], fmax=cfg.env.fmax, steps=cfg.env.max_steps,
                    calculator=cfg.env.calculator, policy=untrained_policy(cfg), progress=False)
    assert row["eval/untrained_success"] == base["optimizers"]["rl"]["success_rate"]
    assert row["eval/untrained_force_calls_vs_bfgs"] == pytest.approx(base["comparisons"]["rl_vs_bfgs_force_calls"]["ratio"],
                                                                      nan_ok=True)

    # BFGS is not run again: its cached runs are reused (and not changed by judging them)
    cached = [dict(r) for r in live.bfgs]
    live.maybe(40, policy.weights)
    assert live.bfgs == cached


def test_live_eval_ratio_is_nan_when_nothing_is_solved_by_both():
    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    live = LiveEval(cfg, [cu_cluster(5, seed=2)], every=5)  # BFGS relaxes it, the fresh policy does not
    row = live.evaluate(Policy(cfg))
    assert live.bfgs[0]["converged"] and live.bfgs[0]["lowest_curvature_ev_per_a2"] is not None  # checked, a minimum
    assert row["eval/success"] == 0.0 and row["eval/n_both_solved"] == 0
    assert math.isnan(row["eval/force_calls_vs_bfgs"])
    assert progress_field(row) == "eval 0.00"


def test_live_eval_success_is_nan_when_bfgs_gives_no_reference():
    """eval's rule: a structure where BFGS (the live evaluation's classical optimizer) reached no minimum is
    unjudged, so with only such structures there is no success rate to report."""
    cfg = load_config(None, TINY + ["env.max_steps=3"])
    torch.manual_seed(0)
    live = LiveEval(cfg, [cu_cluster(5, seed=2)], every=5)
    row = live.evaluate(Policy(cfg))
    assert not live.bfgs[0]["converged"] and not live.records[0]["judged"]
    assert math.isnan(row["eval/success"]) and row["eval/n_both_solved"] == 0
    assert progress_field(row) == "eval –"


def test_sample_is_the_first_n_small_enough_heldout_structures():
    heldout = [cu_cluster(n, seed=n) for n in (9, 4, 12, 5, 6, 7)]
    assert [len(a) for a in heldout_sample(heldout, 3, 8)] == [4, 5, 6]
    assert [len(a) for a in heldout_sample(heldout, 2, 0)] == [9, 4]


def test_off_unless_eval_every_and_a_structure():
    off = LiveEval.for_run(load_config(None, TINY), [cu_cluster(4, seed=1)])  # run.eval_every = 0 by default
    assert off.every == 0 and not off.due(200) and off.maybe(200, dict) == {}
    cfg = load_config(None, TINY + ["run.eval_every=20", "run.eval_max_atoms=3"])
    assert LiveEval.for_run(cfg, [cu_cluster(4, seed=1)]).maybe(20, dict) == {}  # no structure of ≤ 3 atoms


def test_early_updates_are_due_besides_the_multiples():
    cfg = load_config(None, TINY + ["run.eval_every=40", "run.eval_early=[10, 20]"])
    live = LiveEval.for_run(cfg, [cu_cluster(4, seed=1)])
    assert [u for u in range(1, 100) if live.due(u)] == [10, 20, 40, 80]


@pytest.mark.parametrize("row, field", [
    ({}, None),
    ({"eval/success": 0.75, "eval/force_calls_vs_bfgs": 1.1}, "eval 0.75 @1.1×BFGS"),
    ({"eval/success": 1.0, "eval/force_calls_vs_bfgs": 0.8421}, "eval 1.00 @0.84×BFGS"),
    ({"eval/success": math.nan, "eval/force_calls_vs_bfgs": math.nan}, "eval –"),
])
def test_progress_field(row, field):
    assert progress_field(row) == field


@pytest.mark.parametrize("override, message", [
    ("run.eval_every=-1", "run.eval_every must be >= 0"),
    ("run.eval_sample=0", "run.eval_sample must be >= 1"),
    ("run.eval_every=15", "a multiple of learner.log_every (10)"),
])
def test_bad_live_eval_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["run.eval_every=40", "run.eval_early=[15]"], "run.eval_early must be multiples of learner.log_every (10)"),
    (["run.eval_every=40", "run.eval_early=[20, 10]"], "an increasing list of update counts"),
    (["run.eval_early=[10]"], "empty while eval_every = 0"),
])
def test_bad_early_live_evaluations_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, overrides)


def test_progress_line_shows_the_newest_live_evaluation():
    from relaxrl.launcher import _progress_line

    s = {"t_total": 1200, "episodes/online_success": 0.5}
    assert "eval" not in _progress_line(s, {}, 200)
    line = _progress_line(s, {"eval/success": 0.75, "eval/force_calls_vs_bfgs": 1.1}, 200)
    assert line.startswith("updates 200  t_total 1200  success 0.50  eval 0.75 @1.1×BFGS  Fmax")


def test_with_the_critic_q_is_compared_with_the_return_of_the_same_steps():
    """eval/q is the critic's Q1(s, π(s)) over the greedy steps through the training env, eval/return
    the observed discounted return-to-go of exactly those steps (recomputed here independently)."""
    import numpy as np

    from actors.env import RelaxEnv
    from actors.loop import returns_to_go
    from learner.critic import TwinCritic
    from learner.graph import batch_graphs
    from relaxrl.live_eval import CRITIC_KEYS

    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    policy = Policy(cfg)
    critic = TwinCritic(cfg.network, cfg.env)
    critic.train()
    structures = [cu_cluster(5, seed=2), cu_cluster(6, seed=3)]
    live = LiveEval(cfg, structures, every=10)
    row = live.maybe(10, policy.weights, critic=critic)
    assert set(row) == set(KEYS) | set(CRITIC_KEYS) | set(UNTRAINED_KEYS)
    assert critic.training  # left as the learner had it

    env = RelaxEnv(cfg.env)
    qs, gs = [], []
    for atoms in structures:
        obs = env.reset(atoms)
        steps, rewards, done = [], [], False
        while not done:
            action = live.policy.act(obs)
            step = env.step(action)
            steps.append((obs, action))
            rewards.append(step.reward)
            obs, done = step.obs, step.terminated or step.truncated
        graph = batch_graphs([o for o, _ in steps], cfg.network, env_input_dim=cfg.env.env_input_dim)
        with torch.no_grad():
            qs += critic.q1(graph, torch.as_tensor(np.concatenate([a for _, a in steps]),
                                                   dtype=next(critic.parameters()).dtype)).tolist()
        g, rtg = 0.0, []
        for r in reversed(rewards):
            g = r + cfg.learner.gamma * g
            rtg.append(g)
        gs += rtg
    assert row["eval/q"] == pytest.approx(float(np.mean(qs)), rel=1e-6)
    assert row["eval/return"] == pytest.approx(float(np.mean(gs)), rel=1e-9)
    assert returns_to_go([1.0, 2.0, 3.0], 0.5) == [1.0 + 0.5 * 2.0 + 0.25 * 3.0, 2.0 + 0.5 * 3.0, 3.0]


def test_large_suite_cells_join_the_sample_with_their_own_budget():
    """run.eval_sample_large adds the first large-suite cells (as run.eval_large takes them) after the held-out
    sample, with suite-large's 600 steps; the row judges them with the rest."""
    from actors.suite import large_sample
    from relaxrl.eval_cli import SET_STEPS

    cfg = load_config(None, TINY + ["run.eval_every=20", "run.eval_sample_large=1", "env.max_steps=10"])
    live = LiveEval.for_run(cfg, [cu_cluster(4, seed=1)])
    big = large_sample(1)[0]
    assert [len(a) for a in live.structures] == [4, len(big)] and len(big) >= 100
    assert live.steps == [cfg.env.max_steps, SET_STEPS["suite-large"]] == [10, 600]
    assert live.bfgs[1]["converged"] and live.bfgs[1]["steps"] > 10  # the larger budget was used
    torch.manual_seed(0)
    row = live.evaluate(Policy(cfg))
    assert live.records[1]["n_atoms"] == len(big) and live.records[1]["runs"]["rl"]["force_calls"] > 0
    assert row["eval/n_both_solved"] == sum(r["runs"]["rl"]["success"] and r["runs"]["bfgs"]["success"]
                                            for r in live.records)
    with pytest.raises(ValueError, match="2 step budgets for 1 structures"):
        LiveEval(cfg, [cu_cluster(4, seed=1)], every=20, steps=[10, 600])


def test_each_evaluation_appends_its_per_structure_results_to_the_log(tmp_path):
    import json

    cfg = load_config(None, TINY)
    torch.manual_seed(0)
    policy = Policy(cfg)
    path = tmp_path / "live_eval.jsonl"
    live = LiveEval(cfg, two_structures(), every=10, log_path=path)
    assert live.maybe(5, policy.weights) == {}  # not due: nothing written beyond the untrained line
    row = live.maybe(10, policy.weights)
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert [(x["updates"], x["policy"]) for x in lines] == [(0, "untrained"), (10, "rl")]
    newest = lines[-1]["structures"]
    assert [s["n_atoms"] for s in newest] == [5, 4]
    for s, rec in zip(newest, live.records, strict=True):  # the same runs the row pools
        assert s["force_calls"] == rec["runs"]["rl"]["force_calls"] and s["bfgs_force_calls"] == rec["runs"]["bfgs"]["force_calls"]
        assert s["success"] == bool(rec["runs"]["rl"]["success"])
    assert row["eval/success"] == sum(s["success"] for s in newest) / len(newest)


def test_the_run_report_draws_the_per_structure_curve_from_the_log(tmp_path):
    import json

    from relaxrl.training_report import plot_run, read_live_structures

    rows = [{"updates": 0, "policy": "untrained", "structures": [{"name": "000-Cu5", "force_calls": 20, "success": True}]},
            {"updates": 20, "policy": "rl", "structures": [{"name": "000-Cu5", "force_calls": 15, "success": True}]},
            {"updates": 40, "policy": "rl", "structures": [{"name": "000-Cu5", "force_calls": 30, "success": False}]}]
    (tmp_path / "live_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"updates": 6')  # cut line
    untrained, curves = read_live_structures(tmp_path)
    assert untrained == {"000-Cu5": 20} and curves == {"000-Cu5": [(20, 15, True), (40, 30, False)]}
    written = plot_run(tmp_path)
    assert tmp_path / "plots" / "live_eval_structures.png" in written
