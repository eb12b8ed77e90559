"""`relaxrl train` with env.relax_cell end to end: real Ray, real embedded Redis, real EMT on strained crystals.

Cell rows travel from the actors' environments (FrechetCellFilter) through the codec's version-2 payloads in
Redis to the learner's batches and back as weights; the live and after-training evaluations relax the cell too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from actors.geometry import random_strain

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tiny_cell_relaxation_run_trains_and_evaluates_on_the_filter(tmp_path):
    crystals = tmp_path / "crystals"
    crystals.mkdir()
    rng = np.random.default_rng(0)
    for k, (el, a) in enumerate((("Cu", 3.61), ("Ni", 3.52), ("Al", 4.05), ("Pd", 3.89), ("Ag", 4.09), ("Au", 4.08),
                                 ("Pt", 3.92), ("Cu", 3.61))):
        atoms = bulk(el, "fcc", a=a, cubic=True) * ((2, 1, 1) if k % 2 else (1, 1, 1))
        atoms.rattle(0.05, seed=k)
        write(crystals / f"{k}-{el}.extxyz", random_strain(atoms, 0.03, rng))
    run_dir = tmp_path / "run"
    overrides = ["env.relax_cell=true", "env.history_steps=3", "network.actor_head='quasi-newton'",
                 "network.path_history=true", f"curriculum.source='{crystals}'", "curriculum.strain=0.03",
                 "curriculum.stages=[8]", "learner.max_updates=10", "run.eval_every=10", "run.eval_episodes=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "relaxrl.cli", "train", "--no-progress", "--config", str(ROOT / "configs" / "tiny.toml"),
           "--run-dir", str(run_dir)] + [x for o in overrides for x in ("--set", o)]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    assert not any(s in p.stderr for s in ("Traceback", "RayTaskError", "CodecError"))
    assert (run_dir / "checkpoints" / "ckpt-00000010.pt").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert rows[-1]["updates"] == 10 and all(np.isfinite(r["losses/critic"]) for r in rows)
    assert "eval/success" in rows[-1]  # the live evaluation ran on the filter too
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["settings"]["relax_cell"] is True and ev["settings"]["n_structures"] >= 1
    for s in ev["structures"]:
        for r in s["runs"].values():
            assert r["error"] is None and r["force_calls"] >= 1 and r["calc_time_s"] > 0
