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

from learner.policy import Policy, save_policy
from relaxrl.cli import main
from common.config import load_config
from relaxrl.evaluate import EvalError, _judge, evaluate, fragment_count, parse_optimizers
from test_optimizer import ForcePolicy


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
    for name, o in opts.items():
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
    _judge([s], energy_tol=1e-3)
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
