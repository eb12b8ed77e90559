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
from ase.io import write
from ase.optimize import BFGS, FIRE

from common.config import load_config
from learner.policy import Policy, save_policy
from relaxrl.cli import main
from relaxrl.evaluate import EvalError, evaluate, fragment_count, judge, parse_optimizers
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
        assert min(r["energy_above_best_mev_per_atom"] for r in s["runs"].values()) == pytest.approx(0.0)
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


def _run(energy: float, converged: bool = True, frag: tuple[int, int] = (1, 1)) -> dict:
    return {"energy": energy, "converged": converged, "error": None, "force_calls": 10,
            "fragments_initial": frag[0], "fragments_final": frag[1]}


def test_judging_flags_higher_minima_and_fragmentation():
    s = {"name": "x", "n_atoms": 4, "runs": {
        "bfgs": _run(-1.000),
        "fire": _run(-1.000 + 4 * 0.0009),   # 0.9 meV/atom above the best: still a success
        "lbfgs": _run(-1.000 + 4 * 0.0011),  # 1.1 meV/atom above: higher minimum
        "rl": _run(-5.0, frag=(1, 3)),       # lowest energy but fell apart: excluded from the best
        "gpmin": _run(-1.0, converged=False),
    }}
    judge([s], energy_tol=1e-3)
    r = s["runs"]
    assert s["best_energy"] == pytest.approx(-1.0)
    assert r["bfgs"]["success"] and r["fire"]["success"]
    assert r["lbfgs"]["higher_minimum"] and not r["lbfgs"]["success"]
    assert r["lbfgs"]["energy_above_best_mev_per_atom"] == pytest.approx(1.1)
    assert r["rl"]["fragmented"] and not r["rl"]["success"]
    assert not r["gpmin"]["success"] and not r["gpmin"]["higher_minimum"]
    assert s["rl_over_bfgs_force_calls"] == 1.0


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
        evaluate(structures(), ["rl"], progress=False)


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
    (["--curvature-check", "-1"], "--curvature-check must be >= 0"),
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
    rc = main(["eval", "--checkpoint", str(checkpoint), "--structures", str(d), "--optimizers", "rl", "--steps", "3",
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
    from relaxrl.after_training import after_training_line, evaluate_after_training

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2", "env.max_steps=100",
                             "run.eval_episodes=2", "run.eval_max_atoms=8"])
    torch.manual_seed(0)
    start = Policy(cfg)
    trained = Policy(cfg)  # stands in for the trained weights: different from the start
    save_policy(tmp_path, cfg, trained.actor, updates=30)
    heldout = [bulk("Cu", cubic=True) * (2, 2, 2), cu_cluster(4, seed=1), cu_cluster(5, seed=2), cu_cluster(6, seed=3)]
    for k, a in enumerate(heldout):
        a.info["name"] = f"held-{k}"
    report = evaluate_after_training(cfg, tmp_path, heldout, start.weights())

    ev = json.loads((tmp_path / "eval.json").read_text())
    st = ev["settings"]
    assert st["optimizers"] == ["rl", "untrained", "bfgs"]
    assert (st["fmax"], st["steps"], st["energy_tol_ev_per_atom"]) == (cfg.env.fmax, 100, 1e-3)
    assert [s["name"] for s in ev["structures"]] == ["held-1", "held-2"]  # ≤ 8 atoms, at most 2
    assert st["policies"]["rl"]["version"] == 30 and st["policies"]["untrained"]["version"] == 0
    for s in ev["structures"]:  # success as `relaxrl eval` defines it
        for r in s["runs"].values():
            assert r["success"] == (r["converged"] and not r["fragmented"] and r["error"] is None
                                    and r["energy_above_best_mev_per_atom"] <= 1.0)
        assert s["runs"]["bfgs"]["success"]
    md = (tmp_path / "eval.md").read_text()
    assert md.startswith("# Held-out evaluation after training")
    assert "| untrained |" in md and "Policy `rl`: config `demo`, weights version 30 (trained" in md
    assert "`plots/eval_force_calls.png`" in md
    for png in ("eval_force_calls.png", "eval_fmax_vs_step.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    line = after_training_line(report)
    o = ev["optimizers"]
    assert line == (f"held-out success trained {o['rl']['success_rate']:.2f} vs untrained "
                    f"{o['untrained']['success_rate']:.2f} (BFGS 1.00) on 2 structures")

    empty = evaluate_after_training(cfg, tmp_path, heldout[:1], None)  # only a 32-atom structure: nothing to do
    assert after_training_line(empty) == ("no held-out evaluation (no held-out structure has at most "
                                          "run.eval_max_atoms = 8 atoms)")
    assert "Nothing evaluated" in (tmp_path / "eval.md").read_text()


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
            assert entry["optimizers"][opt] == {"n_runs": len(group), "n_success": n_success,
                                                "success_rate": n_success / len(group)}
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
    plain = evaluate(structures, ["bfgs"], steps=200, progress=False)
    checked = evaluate(structures, ["bfgs"], steps=200, progress=False, curvature_max_atoms=8)
    runs = {s["name"]: s["runs"]["bfgs"] for s in checked["structures"]}
    assert all(r["converged"] for r in runs.values())
    assert runs["square"]["lowest_curvature_ev_per_a2"] < -0.5
    assert runs["square"]["saddle"] and not runs["square"]["higher_minimum"]
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
