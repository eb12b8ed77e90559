"""`relaxrl eval --relax-cell` / `relaxrl relax --relax-cell` and the crystals set: every optimizer on the same
FrechetCellFilter, fmax as ASE defines it on the filter, wall time split at the calculator; real EMT (CHGNet in the
slow test)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Octahedron
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import FIRE

from actors.geometry import random_strain
from common.config import load_config
from learner.policy import Policy, save_policy
from relaxrl.cli import main
from relaxrl.evaluate import EvalError, evaluate


def strained(el: str, a: float, seed: int):
    atoms = bulk(el, "fcc", a=a, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return random_strain(atoms, 0.04, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def cell_checkpoint(tmp_path_factory):
    """An untrained quasi-Newton policy trained-for the cell (env.relax_cell), its outputs zero: L-BFGS on the rows."""
    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "network.actor_head='quasi-newton'",
                             "network.path_history=true", "env.history_steps=4", "env.relax_cell=true",
                             "network.step_size=0.02"])
    torch.manual_seed(0)
    actor = Policy(cfg).actor
    with torch.no_grad():
        for p in list(actor.head.parameters()) + list(actor.cell_head.parameters()):
            p.zero_()
    return save_policy(tmp_path_factory.mktemp("run"), cfg, actor)


def test_every_optimizer_runs_on_the_filter_and_fmax_is_the_filters():
    structures = {"Cu4": strained("Cu", 3.61, 1), "Ni4": strained("Ni", 3.52, 2)}
    report = evaluate(structures, ["fire", "bfgs"], fmax=0.05, steps=300, calculator="emt", progress=False,
                      relax_cell=True, curvature_max_atoms=0)
    assert report["settings"]["relax_cell"] is True
    for name, atoms in structures.items():  # FIRE on FrechetCellFilter, run directly: the same numbers
        a = atoms.copy()
        a.calc = EMT()
        filt = FrechetCellFilter(a)
        opt = FIRE(filt, logfile=None)
        converged = opt.run(fmax=0.05, steps=300)
        run = next(s for s in report["structures"] if s["name"] == name)["runs"]["fire"]
        assert run["steps"] == opt.nsteps and run["converged"] == converged
        assert run["force_calls"] == opt.nsteps + 1  # one call per geometry: the stress comes with it
        assert run["fmax"] == pytest.approx(float(np.linalg.norm(filt.get_forces(), axis=1).max()), abs=1e-10)
        assert run["energy"] == pytest.approx(a.get_potential_energy(), abs=1e-10)
        assert run["calc_time_s"] > 0 and run["optimizer_time_s"] >= 0
        assert run["calc_time_s"] + run["optimizer_time_s"] == pytest.approx(run["wall_time_s"])
    assert report["optimizers"]["fire"]["calc_time_s"]["total"] > 0
    with pytest.raises(EvalError, match="not periodic in all three directions"):
        evaluate({"Ag6": Octahedron("Ag", 2)}, ["bfgs"], calculator="emt", progress=False, relax_cell=True)


def test_eval_command_relax_cell_with_the_policy(tmp_path, cell_checkpoint, capsys):
    d = tmp_path / "cells"
    d.mkdir()
    for k, (el, a) in enumerate((("Cu", 3.61), ("Ni", 3.52))):
        write(d / f"{el}.extxyz", strained(el, a, 10 + k))
    rc = main(["eval", "--checkpoint", str(cell_checkpoint), "--structures", str(d), "--optimizers", "rl,fire,bfgs",
               "--relax-cell", "--steps", "300", "--curvature-check", "0", "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["settings"]["relax_cell"] is True
    for s in report["structures"]:
        rl = s["runs"]["rl"]
        assert rl["converged"] and rl["fmax"] < 0.05 and rl["optimizer_time_s"] > 0
    assert "rl_vs_fire_wall_time" in report["comparisons"]
    md = (tmp_path / "o" / "report.md").read_text()
    assert "in calculator s" in md and "FrechetCellFilter(atoms)" in md


def test_crystals_with_emt_and_relax_cell_without_periodicity_are_refused_before_the_work(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--structures", "crystals", "--optimizers", "bfgs", "--calculator", "emt", "--no-progress",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "crystals set needs a calculator" in err and "use --calculator chgnet" in err, err
    assert "Traceback" not in err and not out.exists()
    rc = main(["eval", "--structures", "suite", "--limit", "2", "--optimizers", "bfgs", "--relax-cell",
               "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--relax-cell relaxes cells, but structure" in err and not out.exists(), err


def test_relax_command_relax_cell_moves_the_cell(tmp_path, cell_checkpoint, capsys):
    src = tmp_path / "POSCAR"
    start = strained("Cu", 3.61, 3)
    write(src, start, format="vasp")
    out = tmp_path / "CONTCAR"
    rc = main(["relax", str(src), "--checkpoint", str(cell_checkpoint), "--relax-cell", "--fmax", "0.05",
               "--steps", "300", "--out", str(out)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "converged" in line and "NOT" not in line, line
    relaxed = read(out, format="vasp")
    assert not np.allclose(relaxed.cell[:], start.cell[:], atol=1e-3)
    relaxed.calc = EMT()
    assert np.linalg.norm(FrechetCellFilter(relaxed).get_forces(), axis=1).max() < 0.05 + 1e-4
    cluster = tmp_path / "cluster.xyz"
    write(cluster, Octahedron("Ag", 2), format="extxyz")
    rc = main(["relax", str(cluster), "--checkpoint", str(cell_checkpoint), "--relax-cell", "--out",
               str(tmp_path / "x.xyz")])
    err = capsys.readouterr().err
    assert rc == 2 and "not periodic in all three directions" in err and "--relax-cell" in err, err
    assert not (tmp_path / "x.xyz").exists()


@pytest.mark.slow
def test_crystals_relax_under_chgnet_on_the_filter(tmp_path):
    """The set is what it claims: the first crystals relax with FIRE and BFGS on FrechetCellFilter under CHGNet
    (Matbench Discovery's protocol: fmax 0.05 eV/Å, 500 steps)."""
    pytest.importorskip("chgnet")
    rc = main(["eval", "--structures", "crystals", "--limit", "2", "--optimizers", "fire,bfgs", "--calculator",
               "chgnet", "--calculator-kwargs", '{"device": "cpu"}', "--relax-cell", "--curvature-check", "0",
               "--no-progress", "--out", str(tmp_path / "o")])
    assert rc == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["settings"]["steps"] == 500
    assert [s["name"] for s in report["structures"]] == ["crystal-Si-diamond", "crystal-GaAs-zincblende"]
    assert all(r["success"] for s in report["structures"] for r in s["runs"].values())
