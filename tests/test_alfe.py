"""Al–Fe cells under CHGNet: generation, cached minima, perturbed starts, training and eval through the real CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("chgnet", reason='Al–Fe tests need the mlip extra: pip install -e ".[mlip]" -c constraints.txt')
pytest.importorskip("pyxtal", reason='Al–Fe tests need the mlip extra: pip install -e ".[mlip]" -c constraints.txt')

from actors.alfe import (  # noqa: E402
    MAX_PERTURB,
    AlFeError,
    alfe_minima,
    alfe_structure_set,
    alfe_structures,
    perturb,
    random_alfe_cell,
)
from actors.calculators import make_calculator  # noqa: E402
from actors.curriculum import Curriculum  # noqa: E402
from actors.geometry import find_overlaps  # noqa: E402
from common.config import CurriculumConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU = {"device": "cpu"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One minima cache for this module (and the `relaxrl` subprocesses it starts)."""
    d = tmp_path_factory.mktemp("relaxrl-cache")
    old = os.environ.get("RELAXRL_CACHE_DIR")
    os.environ["RELAXRL_CACHE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("RELAXRL_CACHE_DIR", None)
    else:
        os.environ["RELAXRL_CACHE_DIR"] = old


@pytest.mark.parametrize("n_atoms", [2, 5, 8, 12, 20])
def test_random_cells_are_seeded_binary_and_of_the_asked_size(n_atoms):
    a, group = random_alfe_cell(n_atoms, np.random.default_rng([0, n_atoms]))
    b, group_b = random_alfe_cell(n_atoms, np.random.default_rng([0, n_atoms]))
    assert len(a) == n_atoms and set(a.get_chemical_symbols()) == {"Al", "Fe"}
    assert group == group_b and np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell)
    assert a.pbc.all() and 1 <= group <= 230


def test_perturbation_is_bounded_seeded_and_never_overlaps():
    a, _ = random_alfe_cell(8, np.random.default_rng(1))
    for seed in range(20):
        p = perturb(a, MAX_PERTURB, np.random.default_rng(seed))
        d = np.linalg.norm(p.positions - a.positions, axis=1)
        assert d.max() <= MAX_PERTURB + 1e-12 and d.max() > 0.05
        assert not find_overlaps(p, 0.6)
        assert np.array_equal(p.positions, perturb(a, MAX_PERTURB, np.random.default_rng(seed)).positions)


def test_minima_are_relaxed_once_and_then_read_from_the_cache(cache):
    minima = alfe_minima("alfe-heldout", 2, seed=0, calculator="chgnet", calculator_kwargs=CPU)
    files = sorted((cache / "alfe").glob("alfe-heldout-s0-chgnet-*/*.json"))
    assert len(files) >= 2 and all(json.loads(f.read_text())["status"] in ("ok", "failed") for f in files)
    stamps = [f.stat().st_mtime_ns for f in files]
    calc = make_calculator("chgnet", CPU)
    for m in minima:
        assert 2 <= len(m) <= 8 and set(m.get_chemical_symbols()) == {"Al", "Fe"}
        m.calc = calc
        assert np.linalg.norm(m.get_forces(), axis=1).max() < 0.05  # a minimum under CHGNet (relaxed to 0.02 with the cell)
    again = alfe_minima("alfe-heldout", 2, seed=0, calculator="chgnet", calculator_kwargs={"model_name": "0.3.0"})
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing recomputed (device is not part of the key)
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(minima, again))
    # the evaluation set: the same minima, displaced once by up to 0.5 Å with a seeded generator
    starts = alfe_structure_set("alfe-heldout", 2, seed=0, calculator="chgnet", calculator_kwargs=CPU)
    for s, m in zip(starts, minima):
        d = np.linalg.norm(s.positions - m.positions, axis=1)
        assert 0 < d.max() <= MAX_PERTURB + 1e-12 and s.info["name"] == m.info["name"]


def test_curriculum_displaces_training_minima_anew_each_episode(cache):
    train, held = alfe_structures(CurriculumConfig(n_structures=2, heldout_fraction=0.5, stages=(8,)), 0,
                                  "chgnet", CPU)
    assert len(train) == 1 and len(held) == 1 and train[0].info["perturb"] == MAX_PERTURB
    cur = Curriculum(train, CurriculumConfig(stages=(8,)))
    rng = np.random.default_rng(0)
    a, b = cur.sample(rng), cur.sample(rng)
    assert "perturb" not in a.info and not np.allclose(a.positions, b.positions)
    for s in (a, b):
        assert np.linalg.norm(s.positions - train[0].positions, axis=1).max() <= MAX_PERTURB + 1e-12


def test_alfe_needs_a_calculator_that_handles_fe(cache):
    with pytest.raises(AlFeError, match="env.calculator = 'chgnet'"):
        alfe_minima("alfe-train", 1, calculator="emt")
    with pytest.raises(AlFeError, match="choose from alfe-train, alfe-heldout, alfe-large"):
        alfe_minima("alfe-huge", 1)


@pytest.mark.slow
def test_train_with_chgnet_then_eval_on_alfe_cells(cache, tmp_path):
    """A few updates of `relaxrl train` with CHGNet on Al–Fe cells, then `relaxrl eval --limit 2` on held-out cells."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    sets = ["env.calculator=chgnet", 'env.calculator_kwargs={device="cpu"}', "curriculum.source=alfe",
            "curriculum.n_structures=3", "curriculum.heldout_fraction=0.34", "curriculum.stages=[8]",
            "learner.max_updates=5", "run.eval_episodes=1", "env.max_steps=20"]
    p = subprocess.run([sys.executable, "-m", "relaxrl.cli", "train", "--no-progress", "--config",
                        str(ROOT / "configs" / "tiny.toml"), "--run-dir", str(run_dir),
                        *[x for s in sets for x in ("--set", s)]],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (run_dir / "checkpoints" / "ckpt-00000005.pt").is_file()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert rows and rows[-1]["updates"] == 5 and rows[-1]["t_total"] > 0
    assert all(np.isfinite(r["losses/critic"]) for r in rows)
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["settings"]["n_structures"] == 1 and ev["settings"]["calculator"] == "chgnet"

    # eval: no --calculator, so the checkpoint's CHGNet (and its kwargs) relax the held-out Al–Fe cells
    from relaxrl.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run_dir), "--structures", "alfe-heldout", "--limit", "2",
                 "--optimizers", "rl,bfgs,fire", "--steps", "60", "--no-progress", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["calculator"] == "chgnet" and report["settings"]["n_structures"] == 2
    for s in report["structures"]:
        assert s["name"].startswith("alfe-heldout-s0-") and set(s["runs"]) == {"rl", "bfgs", "fire"}
        for opt in ("bfgs", "fire"):  # downhill from the displaced minimum, every force call counted
            run = s["runs"][opt]
            assert run["error"] is None and run["force_calls"] > 1 and run["energy"] < run["energy_initial"]
        rl = s["runs"]["rl"]  # 5 updates: the policy may still raise the energy; eval then records the guard's stop
        assert rl["error"] is None or "PolicyDivergedError" in rl["error"], rl["error"]
        if rl["error"] is not None:
            assert rl["success"] is False


def test_a_minimum_is_a_minimum_of_atoms_and_cell():
    """BFGS on the cell filter keeps a cubic cell cubic, so from bcc Cu (EMT) it stops on the bcc saddle of atoms and
    cell. relax_minimum finds the negative mode over the filter's rows, leaves along it and ends in fcc (the
    tetragonal cell of c/a = √2), at fcc's energy, with no negative curvature left."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from actors.alfe import relax_minimum
    from actors.hessian import lowest_curvature

    minimum, info = relax_minimum(bulk("Cu", "bcc", a=2.87, cubic=True), EMT())
    assert info["converged"] and info["saddle_escapes"] >= 1 and not info["saddle"]
    assert lowest_curvature(minimum, EMT(), cell=True) > -1e-3
    fcc = bulk("Cu", "fcc", a=3.6)
    fcc.calc = EMT()
    BFGS(FrechetCellFilter(fcc), logfile=None).run(fmax=1e-4, steps=100)
    assert info["energy_per_atom"] == pytest.approx(fcc.get_potential_energy(), abs=2e-4)
    lengths = np.sort(minimum.cell.lengths())
    assert lengths[2] / lengths[0] == pytest.approx(np.sqrt(2), rel=0.01)
