"""bench/training_curve.py: a run's checkpoints against its untrained policy, judged against one set of reference
minima; a checkpoint that holds the run's starting weights is the untrained policy, run for run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from common.config import load_config
from learner.policy import save_policy, untrained_policy

ROOT = Path(__file__).resolve().parents[1]
TINY = ["network.channels=8", "network.num_layers=2", "network.actor_head=model-hessian", "network.path_history=true",
        "env.history_steps=2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "training_curve.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_checkpoints_are_judged_next_to_the_untrained_policy(tmp_path):
    cfg = load_config(None, TINY)
    start = untrained_policy(cfg)
    save_policy(tmp_path, cfg, start.actor, updates=0)  # the run's starting weights
    changed = untrained_policy(cfg).actor
    with torch.no_grad():
        changed.head.bias.add_(0.3)  # a larger diagonal of the model Hessian: shorter moves
    save_policy(tmp_path, cfg, changed, updates=10)

    p = _run("--run", str(tmp_path), "--checkpoints", "0,last", "--structures", "suite", "--quick", "--optimizers", "bfgs",
             "--plot", str(tmp_path / "curve.png"))
    assert p.returncode == 0, p.stderr[-3000:]
    curve = json.loads(p.stdout)
    first, second = curve["checkpoints"]
    assert (first["updates"], second["updates"]) == (0, 10)
    assert first["pooled"]["judged"] == curve["untrained"]["judged"] == 3
    # the starting weights are the untrained policy: the same runs, so the same success and a ratio of exactly 1
    assert first["pooled"]["success"] == curve["untrained"]["success"]
    assert first["pooled"]["vs_untrained"] == 1.0 and first["pooled"]["vs_bfgs"] == curve["untrained"]["vs_bfgs"]
    assert second["pooled"]["vs_untrained"] != 1.0  # other weights, other moves
    assert (tmp_path / "curve.png").stat().st_size > 0

    missing = _run("--run", str(tmp_path), "--checkpoints", "5", "--structures", "suite", "--quick")
    assert missing.returncode != 0 and "no checkpoint at update(s) [5]" in missing.stderr and "[0, 10]" in missing.stderr
    not_a_count = _run("--run", str(tmp_path), "--checkpoints", "1000,END", "--structures", "suite", "--quick")
    assert not_a_count.returncode == 2 and "['end'] are not update counts" in not_a_count.stderr
