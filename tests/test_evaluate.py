"""`relaxrl eval` and evaluate(): counts equal ASE's own, judging of successes, the written report."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Octahedron
from ase.filters import FrechetCellFilter
from ase.io import write
from ase.optimize import BFGS, FIRE

from common.config import load_config
from learner.policy import Policy, save_policy
from relaxrl.cli import main
from relaxrl.evaluate import EvalError, build_report, evaluate, fragment_count, judge, parse_optimizers, summarize
from test_optimizer import ForcePolicy, ScatterPolicy


class CountedEMT(EMT):
    """EMT that counts its own calculations: an independent count for the comparison with ASE."""

    calls = 0

    def calculate(self, *args, **kwargs):
        type(self).calls += 1
        super().calculate(*args, **kwargs)


def structures() -> dict[str, Atoms]:
    cu = bulk("Cu", cubic=True) * (2, 1, 1)
    cu.rattle(0.1, seed=4)
    cluster = Octahedron("Ag", 2)  # 6 atoms
    cluster.rattle(0.15, seed=5)
    return {"bulk-Cu8": cu, "cluster-Ag6": cluster}


@pytest.mark.parametrize("name, cls", [("bfgs", BFGS), ("fire", FIRE)])
def test_report_numbers_equal_ase_run_directly(name, cls):
    """The report's steps and force calls for BFGS/FIRE are exactly what ASE gives when run directly."""
    report = evaluate(structures(), [name], fmax=0.05, steps=100, calculator="emt", progress=False)
    for sname, atoms in structures().items():
        a = atoms.copy()
        CountedEMT.calls = 0
        a.calc = CountedEMT()
        opt = cls(a, logfile=None)
        converged = opt.run(fmax=0.05, steps=100)
        run = next(s for s in report["structures"] if s["name"] == sname)["runs"][name]
        assert run["steps"] == opt.nsteps
        assert run["force_calls"] == CountedEMT.calls
        assert run["converged"] == bool(converged)
        assert run["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-10)
        assert len(run["fmax_trace"]) == opt.nsteps + 1


def test_evaluate_compares_rl_with_ase_optimizers(tmp_path):
    from relaxrl.reports import write_report

    names = parse_optimizers("rl,bfgs,fire,gpmin")
    report = evaluate(structures(), names, fmax=0.05, steps=200, calculator="emt",
                      policy=ForcePolicy(0.05), progress=False)
    opts = report["optimizers"]
    assert set(opts) == set(names)
    for o in opts.values():
        assert o["n_runs"] == 2
        assert o["success_rate"] == o["n_success"] / 2
        fc = o["force_calls"]
        assert fc["min"] <= fc["median"] <= fc["p90"] <= fc["max"]
    for s in report["structures"]:
        classical = [r["energy_above_reference_mev_per_atom"] for n, r in s["runs"].items() if n != "rl" and r["success"]]
        assert min(classical) == pytest.approx(0.0)  # the reference is a classical optimizer's minimum
        assert s["rl_over_bfgs_force_calls"] == pytest.approx(s["runs"]["rl"]["force_calls"] / s["runs"]["bfgs"]["force_calls"])
        assert s["runs"]["rl"]["rl"]["mode"] == "rl"  # the optimizer's own summary rides along
    both = [s for s in report["structures"] if s["runs"]["rl"]["success"] and s["runs"]["bfgs"]["success"]]
    expected = np.mean([s["runs"]["rl"]["force_calls"] for s in both]) / np.mean([s["runs"]["bfgs"]["force_calls"] for s in both])
    assert report["comparisons"]["rl_vs_bfgs_force_calls"]["ratio"] == pytest.approx(expected)
    assert report["comparisons"]["rl_vs_bfgs_force_calls"]["n_both_solved"] == len(both) > 0

    paths = write_report(report, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["fmax_vs_step.png", "force_calls.png", "report.json", "report.md"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["settings"]["optimizers"] == names
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| rl |" in md and "rl_vs_bfgs_force_calls" in md and "cluster-Ag6" in md
    for png in ("force_calls.png", "fmax_vs_step.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _run(energy: float, converged: bool = True, frag: tuple[int, int] = (1, 1), curvature: float | None = None) -> dict:
    return {"energy": energy, "converged": converged, "error": None, "force_calls": 10, "steps": 9, "wall_time_s": 0.1,
            "fragments_initial": frag[0], "fragments_final": frag[1], "lowest_curvature_ev_per_a2": curvature}


def test_judging_flags_higher_minima_and_fragmentation():
    s = {"name": "x", "n_atoms": 4, "runs": {
        "bfgs": _run(-1.000),
        "fire": _run(-1.000 + 4 * 0.0009),   # 0.9 meV/atom above the reference: still a success
        "lbfgs": _run(-1.000 + 4 * 0.0011),  # 1.1 meV/atom above: higher minimum
        "bfgsls": _run(-5.0, frag=(1, 3)),   # lowest energy but fell apart: not the reference
        "gpmin": _run(-1.2, converged=False),  # lower but not converged: not the reference
        "rl": _run(-1.0, frag=(1, 2)),
    }}
    judge([s], energy_tol=1e-3)
    r = s["runs"]
    assert s["reference_energy"] == pytest.approx(-1.0) and s["reference_optimizer"] == "bfgs" and s["judged"]
    assert r["bfgs"]["success"] and r["fire"]["success"]
    assert r["lbfgs"]["higher_minimum"] and not r["lbfgs"]["success"]
    assert r["lbfgs"]["energy_above_reference_mev_per_atom"] == pytest.approx(1.1)
    assert r["bfgsls"]["fragmented"] and not r["bfgsls"]["success"]
    assert r["rl"]["fragmented"] and not r["rl"]["success"] and not r["rl"]["higher_minimum"]
    assert not r["gpmin"]["success"] and not r["gpmin"]["higher_minimum"]
    assert s["rl_over_bfgs_force_calls"] == 1.0


def test_a_policy_below_every_classical_minimum_does_not_move_the_reference():
    """Issue 24's rule: the reference is the classical optimizers' lowest minimum. A policy that finds a deeper one
    succeeds (flagged below_reference) and the classical runs stay successes; under the old rule ("the best any
    optimizer found") BFGS would have failed here."""
    s = {"name": "x", "n_atoms": 10, "runs": {
        "bfgs": _run(-1.00), "fire": _run(-0.995),
        "rl": _run(-1.50), "untrained": _run(-1.20), "some-policy": _run(-0.95),
    }}
    judge([s], energy_tol=1e-3)
    r = s["runs"]
    assert s["reference_energy"] == pytest.approx(-1.00) and s["reference_optimizer"] == "bfgs"
    assert r["bfgs"]["success"] and r["fire"]["success"] and not r["bfgs"]["below_reference"]
    assert r["rl"]["success"] and r["rl"]["below_reference"] and r["untrained"]["below_reference"]
    assert r["rl"]["energy_above_reference_mev_per_atom"] == pytest.approx(-50.0)
    assert r["some-policy"]["higher_minimum"] and not r["some-policy"]["success"]


def test_a_saddle_end_is_a_failure_and_no_reference():
    """A converged run on a saddle point (curvature below −0.05 eV/Å²) is no success, whatever its energy, and a
    classical run there is not the reference; an unchecked run (curvature None) counts as a minimum."""
    s = {"name": "x", "n_atoms": 5, "runs": {
        "bfgs": _run(-1.10, curvature=-0.3),     # lower, but a saddle: not the reference
        "fire": _run(-1.00, curvature=0.4),
        "lbfgs": _run(-1.00, curvature=None),    # not checked: a minimum
        "rl": _run(-1.00, curvature=-0.2),       # the reference's energy, on a saddle
    }}
    judge([s], energy_tol=1e-3)
    r = s["runs"]
    assert s["reference_energy"] == pytest.approx(-1.00) and s["reference_optimizer"] == "fire"
    assert r["bfgs"]["saddle"] and not r["bfgs"]["success"] and not r["bfgs"]["below_reference"]
    assert r["rl"]["saddle"] and not r["rl"]["success"] and not r["rl"]["higher_minimum"]
    assert r["fire"]["success"] and r["lbfgs"]["success"]


def test_a_structure_no_classical_optimizer_solved_is_unjudged():
    """No classical run reached a minimum: no reference, no success for anyone (a converged policy included), and
    the structure is left out of every success rate (n_judged)."""
    unjudged = {"name": "u", "n_atoms": 3, "runs": {
        "bfgs": _run(-1.0, converged=False), "fire": _run(-1.2, curvature=-0.5), "rl": _run(-1.3)}}
    judged = {"name": "j", "n_atoms": 3, "runs": {"bfgs": _run(-1.0), "fire": _run(-1.0), "rl": _run(-0.5)}}
    judge([unjudged, judged], energy_tol=1e-3)
    assert not unjudged["judged"] and unjudged["reference_optimizer"] is None and math.isnan(unjudged["reference_energy"])
    assert not any(r["success"] for r in unjudged["runs"].values())
    assert unjudged["runs"]["rl"]["energy_above_reference_mev_per_atom"] is None
    stats = summarize([unjudged, judged], ["rl", "bfgs", "fire"])
    assert (stats["bfgs"]["n_runs"], stats["bfgs"]["n_judged"], stats["bfgs"]["n_unjudged"]) == (2, 1, 1)
    assert stats["bfgs"]["success_rate"] == 1.0 and stats["rl"]["success_rate"] == 0.0
    only = summarize([unjudged], ["rl"])["rl"]
    assert only["n_judged"] == 0 and only["success_rate"] is None
    from relaxrl.reports import markdown

    report = build_report([unjudged, judged], ["rl", "bfgs", "fire"], {
        "fmax": 0.05, "steps": 10, "energy_tol_ev_per_atom": 1e-3, "calculator": "emt", "curvature_max_atoms": 40})
    assert report["settings"]["n_judged"] == 1
    md = markdown(report)
    assert "Unjudged (no classical optimizer reached a minimum" in md and "| u | 3 |" in md
    assert "| bfgs | 1/1 (100 %), 1 unjudged |" in md


def test_an_eval_without_a_classical_optimizer_is_refused(capsys, tmp_path):
    with pytest.raises(EvalError, match="no classical optimizer.*add one of bfgs"):
        evaluate(structures(), ["rl"], policy=ForcePolicy(0.05), progress=False)
    out = tmp_path / "out"
    assert main(["eval", "--optimizers", "untrained", "--structures", "suite", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no classical optimizer" in err and "Traceback" not in err
    assert not out.exists()


def test_fragment_count():
    dimer = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    assert fragment_count(dimer) == 1
    dimer.positions[1, 0] = 8.0
    assert fragment_count(dimer) == 2
    assert fragment_count(bulk("Cu") * (2, 2, 2)) == 1


def test_bad_arguments_are_eval_errors():
    with pytest.raises(EvalError, match="unknown optimizer.*choose from"):
        parse_optimizers("bfgs,newton")
    with pytest.raises(EvalError, match="needs a policy"):
        evaluate(structures(), ["rl", "bfgs"], progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    torch.manual_seed(0)
    return save_policy(tmp_path_factory.mktemp("run"), cfg, Policy(cfg).actor)


def test_eval_command_on_a_directory(tmp_path, checkpoint, capsys):
    d = tmp_path / "structs"
    d.mkdir()
    for name, atoms in structures().items():
        write(d / f"{name}.extxyz", atoms)
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--structures", str(d), "--optimizers", "rl,bfgs",
               "--steps", "60", "--hybrid", "3", "--no-progress", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for s in report["structures"]:  # hybrid: the rl runs say which part finished and how many steps each took
        rl = s["runs"]["rl"]["rl"]
        assert rl["mode"] == "hybrid" and rl["steps"] == rl["steps_rl"] + rl["steps_bfgs"] == s["runs"]["rl"]["steps"]
    assert "Hybrid mode" in (out / "report.md").read_text()
    assert report["settings"]["n_structures"] == 2 and report["settings"]["checkpoint"] == str(checkpoint)
    assert {s["name"] for s in report["structures"]} == {"bulk-Cu8.extxyz", "cluster-Ag6.extxyz"}
    assert all(math.isfinite(s["runs"]["bfgs"]["energy"]) for s in report["structures"])
    assert "rl_vs_bfgs_force_calls" in capsys.readouterr().out


def test_eval_command_held_out_and_errors(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--structures", "held-out", "--optimizers", "bfgs", "--limit", "2",
                 "--config", "configs/demo.toml", "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["settings"]["n_structures"] == 2
    capsys.readouterr()
    assert main(["eval", "--optimizers", "rl,bfgs", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "needs --checkpoint" in err and "Traceback" not in err
    assert main(["eval", "--optimizers", "bfgs", "--structures", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad arguments, refused before the work


@pytest.mark.parametrize("flags, message", [
    (["--limit", "-1"], "--limit must be >= 0 (0 = every structure, N = the first N), got -1"),
    (["--limit", "-5"], "--limit must be >= 0 (0 = every structure, N = the first N), got -5"),
    (["--curvature-check", "-1"], "--curvature-check must be 0..200"),
    (["--curvature-check", "100000"], "--curvature-check must be 0..200"),
    (["--fmax", "inf"], "--fmax must be a finite force threshold > 0 eV/Å"),
    (["--fmax", "0"], "--fmax must be a finite force threshold > 0 eV/Å"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--set", "learner.actor_lr=1e-4"], "--set learner.actor_lr=1e-4: `relaxrl eval` does not use learner.actor_lr"),
    (["--set", "env.fmax=0.01"], "does not use env.fmax (use --fmax), so the override would be ignored"),
    (["--set", "network.channels=32"], "does not use network.channels"),
])
def test_bad_eval_arguments_are_refused_before_the_work(tmp_path, checkpoint, capsys, flags, message):
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--structures", "held-out", "--optimizers", "rl,bfgs",
               "--no-progress", "--out", str(out), *flags])
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert captured.err.startswith("relaxrl eval: error:") and message in captured.err, captured.err
    assert "heldout_fraction" not in captured.err and "Traceback" not in captured.err
    assert not out.exists()


def test_eval_out_at_an_existing_file_is_refused_before_the_work(tmp_path, capsys):
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    rc = main(["eval", "--structures", "held-out", "--optimizers", "bfgs", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"--out {out} is an existing file; eval writes a directory" in err and "Traceback" not in err
    assert out.read_text() == "keep me"
    rc = main(["eval", "--structures", "held-out", "--optimizers", "bfgs", "--out", str(out / "sub")])
    assert rc == 2 and "is a file, so the directory cannot be created" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_eval_set_overrides_with_a_checkpoint_are_applied(tmp_path, checkpoint):
    d = tmp_path / "structs"
    d.mkdir()
    write(d / "cluster.extxyz", structures()["cluster-Ag6"])
    out = tmp_path / "out"
    rc = main(["eval", "--checkpoint", str(checkpoint), "--structures", str(d), "--optimizers", "rl,bfgs", "--steps", "3",
               "--no-progress", "--set", "env.max_step=0.05", "--set", "env.min_distance_factor=0.5", "--out", str(out)])
    assert rc == 0
    policy = json.loads((out / "report.json").read_text())["settings"]["policy"]
    assert policy["max_step"] == 0.05 and policy["min_distance_factor"] == 0.5  # the policy moved under them
    # the held-out selection follows curriculum.* overrides (the checkpoint's config holds 64 structures, 0.25 held out)
    from actors.generate import demo_structures
    from common.config import CurriculumConfig

    rc = main(["eval", "--checkpoint", str(checkpoint), "--optimizers", "bfgs", "--no-progress", "--set",
               "curriculum.n_structures=4", "--set", "curriculum.heldout_fraction=0.5", "--out", str(tmp_path / "h")])
    assert rc == 0
    held = demo_structures(CurriculumConfig(n_structures=4, heldout_fraction=0.5), seed=0)[1]
    got = json.loads((tmp_path / "h" / "report.json").read_text())["structures"]
    assert [s["name"] for s in got] == [a.info["name"] for a in held] and len(held) < 16


def test_eval_directory_reads_like_training_every_frame_is_a_structure(tmp_path, checkpoint):
    d = tmp_path / "structs"
    d.mkdir()
    write(d / "both.extxyz", list(structures().values()))
    (d / "notes.txt").write_text("not a structure: ignored, as in training")
    out = tmp_path / "out"
    assert main(["eval", "--structures", str(d), "--optimizers", "bfgs", "--no-progress", "--out", str(out)]) == 0
    names = [s["name"] for s in json.loads((out / "report.json").read_text())["structures"]]
    assert names == ["both.extxyz#0", "both.extxyz#1"]


# ----------------------------------------------------------------------------- after training: the same evaluation


def test_after_training_evaluation_is_relaxrl_eval(tmp_path):
    from helpers import cu_cluster
    from learner.policy import untrained_policy
    from relaxrl.after_training import after_training_line, evaluate_after_training

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2", "env.max_steps=100",
                             "run.eval_episodes=2", "run.eval_max_atoms=8"])
    torch.manual_seed(0)
    trained = Policy(cfg)  # stands in for the trained weights: different from the start
    save_policy(tmp_path, cfg, trained.actor, updates=30)
    heldout = [bulk("Cu", cubic=True) * (2, 2, 2), cu_cluster(4, seed=1), cu_cluster(5, seed=2), cu_cluster(6, seed=3)]
    for k, a in enumerate(heldout):
        a.info["name"] = f"held-{k}"
    report = evaluate_after_training(cfg, tmp_path, heldout)

    ev = json.loads((tmp_path / "eval.json").read_text())
    st = ev["settings"]
    assert st["optimizers"] == ["rl", "untrained", "bfgs"]
    assert (st["fmax"], st["steps"], st["energy_tol_ev_per_atom"]) == (cfg.env.fmax, 100, 1e-3)
    assert st["curvature_max_atoms"] == 40  # eval's default saddle check
    assert [s["name"] for s in ev["structures"]] == ["held-1", "held-2"]  # ≤ 8 atoms, at most 2
    assert st["policies"]["rl"]["version"] == 30 and st["policies"]["untrained"]["version"] == 0
    for s in ev["structures"]:  # success as `relaxrl eval` defines it, BFGS's minimum the reference
        assert s["reference_optimizer"] == "bfgs"
        for r in s["runs"].values():
            assert r["success"] == (r["converged"] and not r["fragmented"] and r["error"] is None and not r["saddle"]
                                    and r["energy_above_reference_mev_per_atom"] <= 1.0)
        assert s["runs"]["bfgs"]["success"]
    # 'untrained' is the run's initial actor: the same moves as untrained_policy(cfg) (learner.heads.initial_actor)
    again = evaluate({s["name"]: a for s, a in zip(ev["structures"], heldout[1:3])}, ["untrained", "bfgs"],
                     fmax=cfg.env.fmax, steps=100, policies={"untrained": untrained_policy(cfg)}, progress=False)
    for mine, theirs in zip(ev["structures"], again["structures"], strict=True):
        assert mine["runs"]["untrained"]["force_calls"] == theirs["runs"]["untrained"]["force_calls"]
    md = (tmp_path / "eval.md").read_text()
    assert md.startswith("# Evaluation after training")
    assert "| untrained |" in md and "Policy `rl`: config `demo`, weights version 30 (trained" in md
    assert "`plots/eval_force_calls.png`" in md
    for png in ("eval_force_calls.png", "eval_fmax_vs_step.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    line = after_training_line(report)
    o = ev["optimizers"]
    assert line == (f"held-out success trained {o['rl']['success_rate']:.2f} vs untrained "
                    f"{o['untrained']['success_rate']:.2f} (BFGS 1.00) on 2 structures")

    empty = evaluate_after_training(cfg, tmp_path, heldout[:1])  # only a 32-atom structure: nothing to do
    assert after_training_line(empty) == ("no held-out evaluation (no held-out structure has at most "
                                          "run.eval_max_atoms = 8 atoms)")
    assert "Nothing evaluated" in (tmp_path / "eval.md").read_text()


def test_the_untrained_policy_is_the_learners_initial_actor(tmp_path):
    """`untrained` (eval, after training, bench) and the learner start from one initialisation: the same weights,
    and building it leaves torch's global random stream where it was."""
    from learner.learner import Learner
    from learner.policy import untrained_policy

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2", "run.seed=7"])
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    policy = untrained_policy(cfg)
    assert torch.equal(torch.rand(3), before)  # the global stream did not move
    learner = Learner(cfg, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="cpu")
    mine, theirs = policy.weights(), learner.actor_weights()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    other = untrained_policy(load_config(None, ["network.channels=8", "network.num_layers=2", "run.seed=8"]))
    assert not all(torch.equal(v, other.weights()[k]) for k, v in mine.items())  # another seed, other weights


def test_after_training_adds_large_suite_structures(tmp_path):
    """run.eval_large = N adds the first N large-suite structures at 600 steps, reported per set and pooled."""
    from actors.suite import large_sample
    from relaxrl.after_training import after_training_line, evaluate_after_training
    from relaxrl.reports import markdown

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2", "env.max_steps=30",
                             "run.eval_episodes=1", "run.eval_large=1"])
    save_policy(tmp_path, cfg, Policy(cfg).actor, updates=5)
    from helpers import cu_cluster

    held = cu_cluster(4, seed=1)
    held.info["name"] = "held-0"
    report = evaluate_after_training(cfg, tmp_path, [held])
    large = large_sample(1)
    assert [a.info["name"] for a in large] == ["bulk-defect-Cu255-0"]
    assert [(s["set"], s["name"]) for s in report["structures"]] == [("held-out", "held-0"),
                                                                     ("suite-large", "bulk-defect-Cu255-0")]
    assert report["settings"]["steps"] == {"held-out": 30, "suite-large": 600}
    assert list(report["by_set"]) == ["held-out", "suite-large", "pooled"]
    big = report["structures"][1]["runs"]
    assert big["bfgs"]["success"] and big["bfgs"]["lowest_curvature_ev_per_a2"] is None  # 255 atoms: not checked
    line = after_training_line(report)
    assert line.startswith("held-out success trained ") and "; suite-large success trained " in line
    assert "pooled" not in line
    assert "## Per set" in markdown(report)


def test_eval_suite_reports_per_kind(tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(checkpoint), "--structures", "suite", "--limit", "3",
                 "--optimizers", "rl,bfgs,fire", "--steps", "60", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    records = report["structures"]
    assert [s["kind"] for s in records] == ["cluster", "bulk", "slab"]  # --limit spreads over the kinds
    by_kind = report["by_kind"]
    assert list(by_kind) == ["cluster", "bulk", "slab", "overall"]
    for kind, entry in by_kind.items():
        group = records if kind == "overall" else [s for s in records if s["kind"] == kind]
        assert entry["n_structures"] == len(group)
        for opt in ("rl", "bfgs", "fire"):
            n_success = sum(s["runs"][opt]["success"] for s in group)
            n_judged = sum(s["judged"] for s in group)
            assert entry["optimizers"][opt] == {"n_runs": len(group), "n_judged": n_judged, "n_success": n_success,
                                                "success_rate": n_success / n_judged if n_judged else None}
        for other in ("bfgs", "fire"):
            both = [s for s in group if s["runs"]["rl"]["success"] and s["runs"][other]["success"]]
            ratio = entry[f"rl_vs_{other}_force_calls"]
            assert ratio["n_both_solved"] == len(both)
            if both:
                expected = (np.mean([s["runs"]["rl"]["force_calls"] for s in both])
                            / np.mean([s["runs"][other]["force_calls"] for s in both]))
                assert ratio["ratio"] == pytest.approx(expected)
            else:
                assert ratio["ratio"] is None
    assert by_kind["overall"]["optimizers"]["bfgs"]["n_success"] >= 1  # BFGS solves small EMT cells
    md = (out / "report.md").read_text()
    assert "## Per kind" in md and "| **overall** | 3 |" in md
    assert "overall: success rl" in capsys.readouterr().out


def test_eval_suite_val_is_the_validation_draw(tmp_path):
    """--structures suite-val relaxes the suite's validation draw: the same kinds, other structures."""
    from actors.suite import VALIDATION_SEED, generalisation_suite

    out = tmp_path / "val"
    assert main(["eval", "--structures", "suite-val", "--limit", "2", "--optimizers", "bfgs", "--steps", "60",
                 "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    val = {a.info["name"]: a for a in generalisation_suite(kinds=["cluster", "bulk"], seed=VALIDATION_SEED)}
    assert report["settings"]["structures"] == "suite-val"
    assert [s["kind"] for s in report["structures"]] == ["cluster", "bulk"]
    assert all(s["name"] in val and s["n_atoms"] == len(val[s["name"]]) for s in report["structures"])


def test_plain_structures_are_one_kind_file():
    report = evaluate(structures(), ["bfgs"], steps=60, progress=False)
    assert {s["kind"] for s in report["structures"]} == {"file"}
    assert list(report["by_kind"]) == ["file", "overall"]
    assert report["by_kind"]["file"] == report["by_kind"]["overall"]


# ----------------------------------------------------------------------------- issue 14: never silently wrong


def test_a_policy_that_wrecks_a_structure_is_a_failed_run_not_a_failed_eval():
    report = evaluate(structures(), ["rl", "bfgs"], fmax=0.05, steps=100, policy=ScatterPolicy(), progress=False)
    for s in report["structures"]:
        rl, bfgs = s["runs"]["rl"], s["runs"]["bfgs"]
        assert rl["error"].startswith("PolicyDivergedError: the policy raised the energy"), rl["error"]
        assert not rl["success"] and not rl["converged"] and bfgs["success"]
    assert report["optimizers"]["rl"]["n_errors"] == 2 and report["optimizers"]["bfgs"]["n_success"] == 2


@pytest.mark.parametrize("case", ["element", "placeholder pair potential"])
def test_eval_calculator_problems_name_evals_flags_before_the_work(tmp_path, capsys, case):
    d = tmp_path / "structs"
    d.mkdir()
    if case == "element":
        write(d / "si.extxyz", bulk("Si"))
        flags, message = [], "contains Si, which the 'emt' calculator does not handle"
    else:
        write(d / "cu.extxyz", structures()["bulk-Cu8"])
        flags, message = ["--calculator", "ase.calculators.lj:LennardJones"], "needs sigma, epsilon in --calculator-kwargs"
    out = tmp_path / "out"
    rc = main(["eval", "--structures", str(d), "--optimizers", "bfgs", "--no-progress", "--out", str(out), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert "--calculator" in err and "env.calculator" not in err
    assert not out.exists()


def _cu4(shape: str) -> Atoms:
    d = 2.4
    if shape == "square":  # relaxes as a square under BFGS (the forces keep it planar): a saddle point of EMT Cu4
        return Atoms("Cu4", positions=[[0, 0, 0], [d, 0, 0], [d, d, 0], [0, d, 0]])
    return Atoms("Cu4", positions=[[0, 0, 0], [d, 0, 0], [d / 2, 0.87 * d, 0], [d / 2, 0.29 * d, 0.82 * d]])


def test_curvature_check_flags_runs_that_ended_on_a_saddle(tmp_path):
    """A planar Cu4 square converges (Fmax < fmax) on a saddle point: its Hessian has a negative
    eigenvalue (buckling towards the tetrahedron). The check flags it, not the tetrahedron, and
    does not add its Hessian's force calls to the run's."""
    structures = {"square": _cu4("square"), "tetrahedron": _cu4("tetrahedron")}
    plain = evaluate(structures, ["bfgs"], steps=200, progress=False, curvature_max_atoms=0)
    checked = evaluate(structures, ["bfgs"], steps=200, progress=False, curvature_max_atoms=8)
    runs = {s["name"]: s["runs"]["bfgs"] for s in checked["structures"]}
    assert all(r["converged"] for r in runs.values())
    assert runs["square"]["lowest_curvature_ev_per_a2"] < -0.5
    assert runs["square"]["saddle"] and not runs["square"]["higher_minimum"] and not runs["square"]["success"]
    # BFGS, the only classical optimizer, ended on a saddle: the square has no reference and is unjudged
    assert [s["judged"] for s in checked["structures"]] == [False, True]
    assert checked["optimizers"]["bfgs"]["n_judged"] == 1 and checked["optimizers"]["bfgs"]["success_rate"] == 1.0
    assert runs["tetrahedron"]["lowest_curvature_ev_per_a2"] > 1.0 and not runs["tetrahedron"]["saddle"]
    assert checked["optimizers"]["bfgs"]["n_saddle"] == 1
    assert checked["optimizers"]["bfgs"]["n_curvature_checked"] == 2
    plain_runs = {s["name"]: s["runs"]["bfgs"] for s in plain["structures"]}
    assert all(plain_runs[n]["force_calls"] == runs[n]["force_calls"] for n in runs)
    assert all(r["lowest_curvature_ev_per_a2"] is None and not r["saddle"] for r in plain_runs.values())
    # Above the size limit nothing is checked.
    small = evaluate({"square": _cu4("square")}, ["bfgs"], steps=200, progress=False, curvature_max_atoms=3)
    assert small["structures"][0]["runs"]["bfgs"]["lowest_curvature_ev_per_a2"] is None
    # The CLI: the report says which run ended on a saddle.
    for name, atoms in structures.items():
        write(tmp_path / f"{name}.xyz", atoms)
    out = tmp_path / "out"
    assert main(["eval", "--structures", str(tmp_path), "--optimizers", "bfgs", "--curvature-check", "8",
                 "--no-progress", "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Curvature check" in md and "⋈" in md
    assert json.loads((out / "report.json").read_text())["optimizers"]["bfgs"]["n_saddle"] == 1


def test_rigid_body_modes_are_left_out_of_the_curvature():
    """Translations and rotations of a free cluster are not curvature: the lowest eigenvalue of a
    relaxed tetrahedron is that of a vibration. A constrained structure keeps every mode."""
    from ase.constraints import FixAtoms

    from actors.hessian import lowest_curvature, rigid_body_modes

    a = _cu4("tetrahedron")
    a.calc = EMT()
    BFGS(a, logfile=None).run(fmax=0.001, steps=200)
    modes = rigid_body_modes(a)
    assert modes.shape == (12, 6) and np.allclose(modes.T @ modes, np.eye(6), atol=1e-10)
    assert lowest_curvature(a, EMT()) > 1.0
    a.set_constraint(FixAtoms(indices=[0]))
    assert rigid_body_modes(a).shape == (12, 0)
    # One atom held: the rotations about it stay free and are kept, curvature ~0, not a saddle.
    assert abs(lowest_curvature(a, EMT())) < 0.01



def _bcc_cu() -> Atoms:
    """bcc Cu in its cubic 2-atom cell at EMT's stationary lattice constant: every force and the stress vanish by
    symmetry. It is a saddle of atoms and cell (the Bain path leads to fcc) and a minimum of the atoms alone."""
    a = bulk("Cu", "bcc", a=2.87, cubic=True)
    a.calc = EMT()
    BFGS(FrechetCellFilter(a), logfile=None).run(fmax=1e-4, steps=100)
    a.calc = None
    return a


def test_with_relax_cell_the_curvature_check_sees_a_cell_saddle():
    """A cell held at an elastic instability is invisible to the atoms' Hessian; with --relax-cell the check runs
    over the cell filter's rows and flags it (the trained Al–Fe policies stopped on such cells, docs/RESULTS.md)."""
    from actors.hessian import lowest_curvature, lowest_mode

    bcc = _bcc_cu()
    assert lowest_curvature(bcc, EMT()) > 5.0
    value, mode = lowest_mode(bcc, EMT(), cell=True)
    assert value < -0.1 and mode.shape == (3 * 2 + 9,)
    assert np.linalg.norm(mode[-9:]) > 0.9  # a strain of the cell, the atoms' rows (nearly) still
    fcc = bulk("Cu", "fcc", a=3.6)
    fcc.calc = EMT()
    BFGS(FrechetCellFilter(fcc), logfile=None).run(fmax=1e-4, steps=100)
    assert lowest_curvature(fcc, EMT(), cell=True) > -1e-3
    atoms_only = evaluate({"bcc": bcc}, ["bfgs"], steps=50, progress=False, curvature_max_atoms=8)
    with_cell = evaluate({"bcc": bcc}, ["bfgs"], steps=50, progress=False, curvature_max_atoms=8, relax_cell=True)
    a, b = atoms_only["structures"][0]["runs"]["bfgs"], with_cell["structures"][0]["runs"]["bfgs"]
    assert a["converged"] and b["converged"] and b["force_calls"] == a["force_calls"]  # the check is not counted
    assert not a["saddle"] and a["lowest_curvature_ev_per_a2"] > 5.0
    assert b["saddle"] and value <= b["lowest_curvature_ev_per_a2"] < -0.2  # confirmed by the energy over ±0.1
    from relaxrl.reports import markdown

    assert "Hessian over the cell filter's rows" in markdown(with_cell)
    assert "over the cell filter's rows" not in markdown(atoms_only)


# ----------------------------------------------------------------------------- issue 24: strong references, pooled sets


def test_precon_counts_its_line_search_and_mu_fit_at_the_calculator():
    """PreconLBFGS's Armijo line search and Exp's μ fit (a force call at a displaced copy) go through the run's
    calculator: the report's count is the inner calculator's own count, and that of a direct ASE run."""
    from ase.optimize.precon import Exp, PreconLBFGS

    atoms = bulk("Cu", cubic=True) * (2, 2, 2)
    atoms.rattle(0.15, seed=3)
    CountedEMT.calls = 0
    report = evaluate({"Cu32": atoms}, ["precon"], steps=100, calculator=CountedEMT, progress=False,
                      curvature_max_atoms=0)
    run = report["structures"][0]["runs"]["precon"]
    assert run["converged"] and run["force_calls"] == CountedEMT.calls
    assert run["force_calls"] > run["steps"] + 1  # more calls than steps: the fit and line-search trials count
    direct = atoms.copy()
    CountedEMT.calls = 0
    direct.calc = CountedEMT()
    PreconLBFGS(direct, precon=Exp(A=3), logfile=None).run(fmax=0.05, steps=100)
    assert run["force_calls"] == CountedEMT.calls
    assert run["energy"] == pytest.approx(direct.get_potential_energy(), abs=1e-8)


def test_precon_and_goqn_run_on_free_clusters_and_molecules():
    """ASE's own r_NN estimate raises on structures without a cell; eval gives Exp the structure's r_NN
    (a fresh preconditioner per run), so precon relaxes clusters, molecules and periodic cells in one eval."""
    from ase.build import molecule
    from ase.optimize.precon import Exp, PreconLBFGS
    from ase.optimize.precon.neighbors import estimate_nearest_neighbour_distance

    from relaxrl.evaluate import nearest_neighbour_distance

    ch4 = molecule("CH4")
    ch4.rattle(0.05, seed=1)
    cases = {"cluster-Ag6": structures()["cluster-Ag6"], "CH4": ch4, "bulk-Cu8": structures()["bulk-Cu8"]}
    with pytest.raises(RuntimeError, match="increased r_cut"):
        ch4.calc = EMT()
        PreconLBFGS(ch4, precon=Exp(A=3), logfile=None).run(fmax=0.05, steps=5)  # ASE alone
    assert nearest_neighbour_distance(ch4) == pytest.approx(
        max(np.sort(ch4.get_all_distances(), axis=1)[:, 1]))  # each atom's nearest neighbour, the largest of them
    cu = cases["bulk-Cu8"]
    assert nearest_neighbour_distance(cu) == pytest.approx(estimate_nearest_neighbour_distance(cu))  # ASE's own
    report = evaluate(cases, ["precon", "goqn", "bfgs"], steps=200, progress=False)
    for s in report["structures"]:
        for name in ("precon", "goqn"):
            assert s["runs"][name]["error"] is None and s["runs"][name]["converged"], (s["name"], name)


def test_eval_untrained_from_a_checkpoint_and_from_a_config(tmp_path, checkpoint):
    from learner.policy import load_policy, untrained_policy
    from relaxrl.eval_cli import eval_policies

    out = tmp_path / "ckpt"
    assert main(["eval", "--checkpoint", str(checkpoint), "--structures", "suite", "--limit", "1", "--optimizers",
                 "rl,untrained,bfgs", "--steps", "40", "--no-progress", "--out", str(out)]) == 0
    st = json.loads((out / "report.json").read_text())["settings"]
    assert st["policies"]["untrained"]["version"] == 0 and st["policies"]["untrained"]["config_name"] == "demo"
    assert "initial weights of a run of config `demo` (run.seed 0)" in st["policy_notes"]["untrained"]
    assert "rl_vs_untrained_force_calls" in json.loads((out / "report.json").read_text())["comparisons"]
    trained = load_policy(checkpoint)
    policies, _ = eval_policies(["rl", "untrained"], trained, None)
    expected = untrained_policy(trained.config).weights()
    assert all(torch.equal(v, expected[k]) for k, v in policies["untrained"].weights().items())

    out = tmp_path / "cfg"  # no checkpoint: the untrained policy of --config
    assert main(["eval", "--config", "configs/quality.toml", "--structures", "suite", "--limit", "1", "--optimizers",
                 "untrained,bfgs", "--steps", "40", "--no-progress", "--out", str(out)]) == 0
    st = json.loads((out / "report.json").read_text())["settings"]
    assert st["policies"]["untrained"]["config_name"] == "quality" and st["policy"] is None


def test_eval_pools_several_sets_each_at_its_own_budget(tmp_path, capsys):
    out = tmp_path / "pooled"
    assert main(["eval", "--structures", "suite,suite-val", "--limit", "2", "--optimizers", "bfgs,fire",
                 "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    st = report["settings"]
    assert st["steps"] == {"suite": 300, "suite-val": 300} and st["sets"] == ["suite", "suite-val"]
    assert [s["set"] for s in report["structures"]] == ["suite", "suite", "suite-val", "suite-val"]
    assert list(report["by_set"]) == ["suite", "suite-val", "pooled"]
    for name, entry in report["by_set"].items():
        group = [s for s in report["structures"] if name == "pooled" or s["set"] == name]
        for opt in ("bfgs", "fire"):
            runs = [s["runs"][opt] for s in group]
            o = entry["optimizers"][opt]
            assert o["n_success"] == sum(r["success"] for r in runs)
            assert o["force_calls_mean"] == pytest.approx(np.mean([r["force_calls"] for r in runs]))
    assert report["optimizers"]["bfgs"]["n_runs"] == 4 and report["settings"]["n_structures"] == 4
    md = (out / "report.md").read_text()
    assert "## Per set" in md and "| bfgs |" in md and "at most suite 300, suite-val 300 steps" in md
    names = [s["name"] for s in report["structures"]]
    assert f"| suite/{names[0]} |" in md and f"| suite-val/{names[2]} |" in md  # suite and suite-val share names
    assert "pooled: bfgs " in capsys.readouterr().out


def test_gpmin_is_refused_on_large_cells_before_the_work(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "--structures", "suite-large", "--optimizers", "bfgs,gpmin", "--no-progress",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gpmin keeps every step's forces" in err and "bulk-defect-Cu255-0: 255 atoms" in err and "Traceback" not in err
    assert not out.exists()


def test_evaluate_checks_every_structure_with_each_policys_factor_before_any_run():
    """evaluate() from Python builds its RLOptimizers unchecked (no policy's wall time holds the check), so it checks
    every structure first with each policy's env.min_distance_factor: one StructureError naming the structure,
    before any optimizer ran (the real EMT, counted, is never called)."""
    from relaxrl.optimizer import CountingCalculator

    good = bulk("Cu", cubic=True)
    close = Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [2.2, 0.0, 0.0]])  # fine at 0.6, an overlap at 0.9
    calcs: list[CountingCalculator] = []

    def counted() -> CountingCalculator:
        calcs.append(CountingCalculator(EMT()))
        return calcs[-1]

    strict = ForcePolicy(config=load_config(None, ["env.min_distance_factor=0.9"]))
    with pytest.raises(ValueError, match=r"structure 'close': atoms 0 \(Cu\) and 1 \(Cu\) overlap at 2\.200 Å.*0\.9"):
        evaluate({"good": good, "close": close}, ["bfgs", "rl", "untrained"], calculator=counted, policy=ForcePolicy(),
                 policies={"untrained": strict}, progress=False)
    assert calcs == []
    report = evaluate({"close": close}, ["bfgs", "rl"], calculator=counted, policy=ForcePolicy(), steps=5,
                      progress=False)
    assert set(report["structures"][0]["runs"]) == {"bfgs", "rl"} and calcs
