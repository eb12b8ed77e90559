"""`relaxrl train` end to end on configs/tiny.toml: real Ray, real embedded Redis, real EMT.

It checks the wiring the issue asks for: checkpoints, metrics and plots are produced; a
resume continues updates and t_total on the same replay tables; an actor killed with
SIGKILL is restarted by Ray and training goes on.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RELAXRL = [sys.executable, "-m", "relaxrl.cli"]


def _train(args: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(RELAXRL + ["train", "--no-progress", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _check_live_eval(rows: list[dict], every: int) -> None:
    """run.eval_every (tiny: 20): eval/* in the rows of those updates and no other, values in range."""
    evals = [r for r in rows if "eval/success" in r]
    assert [r["updates"] for r in evals] == [r["updates"] for r in rows if r["updates"] % every == 0] != []
    assert all(not any(k.startswith("eval/") for k in r) for r in rows if r["updates"] % every)
    for r in evals:
        assert 0.0 <= r["eval/success"] <= 1.0
        assert 0 <= r["eval/n_both_solved"] <= 4  # run.eval_sample = 4
        ratio = r["eval/force_calls_vs_bfgs"]  # null while the actor solves none of the sample
        assert (ratio is None) == (r["eval/n_both_solved"] == 0) and (ratio is None or ratio > 0)
        assert 0.0 <= r["eval/time_s"] < 60.0
        # the learner's critic on the same greedy steps, next to their observed return
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in ("eval/q", "eval/return"))


@pytest.mark.slow
def test_tiny_run_produces_outputs_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    cfg = str(ROOT / "configs" / "tiny.toml")
    p = _train(["--config", cfg, "--run-dir", str(run_dir), "--set", "learner.max_updates=30"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "held-out success" in p.stdout
    # a normal finish prints no Ray task-failure lines (actors stopped at the end are not errors)
    assert not any(s in p.stderr for s in ("Unhandled error", "ActorDiedError", "RayTaskError", "Traceback", "ray.kill",
                                           "(raylet) Task"))
    # and no error-level line of Ray's own log (e.g. actors with constructor arguments in the object store)
    assert not re.search(r"^\[[\d\-: ,.]+ E \d+ \d+\]", p.stderr, re.MULTILINE), p.stderr[-3000:]
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts and ckpts[-1].name == "ckpt-00000030.pt"
    rows = _rows(run_dir)
    assert [r["updates"] for r in rows] == [5, 10, 15, 20, 25, 30]
    ts = [r["t_total"] for r in rows]
    assert ts == sorted(ts) and ts[0] > 0
    assert all("losses/critic" in r and "charts/q_value" in r for r in rows)
    if any("episodes/online_success" in r for r in rows):  # online episodes ended: their observed return is logged
        assert any(isinstance(r.get("actors/episode_return"), float) for r in rows)
    _check_live_eval(rows, every=20)
    for name in ("actual_move", "q_vs_reward", "action_scale", "fmax_success", "losses", "replay_sizes", "live_eval"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
    # the after-training evaluation is `relaxrl eval`'s: same report, same success definition
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["settings"]["optimizers"] == ["rl", "untrained", "bfgs"] and ev["settings"]["n_structures"] >= 1
    assert ev["settings"]["policies"]["rl"]["version"] == 30
    assert all({"success", "higher_minimum", "fragmented"} <= set(r) for s in ev["structures"] for r in s["runs"].values())
    assert (run_dir / "eval.md").read_text().startswith("# Evaluation after training")
    assert (run_dir / "plots" / "eval_force_calls.png").stat().st_size > 1000
    size_before = rows[-1]["replay/online_size"] + rows[-1]["replay/expert_size"]

    # a fresh run into the same directory is refused (it would mix two runs' curves)
    p = _train(["--config", cfg, "--run-dir", str(run_dir)], cwd=tmp_path)
    assert p.returncode == 2 and "--resume" in p.stderr and "Traceback" not in p.stderr

    # a line a killed run logged past its checkpoint (update 30) goes, as metrics rows do
    live_log = run_dir / "live_eval.jsonl"
    kept = [json.loads(line)["updates"] for line in live_log.read_text().splitlines()]
    with live_log.open("a") as f:
        f.write(json.dumps({"updates": 33, "policy": "rl", "structures": []}) + "\n")
    p = _train(["--resume", str(run_dir), "--set", "learner.max_updates=50"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    after = [json.loads(line)["updates"] for line in live_log.read_text().splitlines()]
    assert 33 not in after and after[:len(kept)] == kept and after[len(kept)] == 0  # the resumed run's untrained line
    rows2 = _rows(run_dir)[len(rows):]
    assert [r["updates"] for r in rows2] == [35, 40, 45, 50]
    _check_live_eval(rows2, every=20)  # a resumed run evaluates on the same schedule
    # t_total continues from the checkpoint, never restarts at 0; the rate limiter
    # (samples_per_insert) makes the resumed learner wait for new actor steps
    assert rows2[0]["t_total"] >= ts[-1]
    assert rows2[-1]["t_total"] > ts[-1]
    # the same replay tables: they were full enough to sample at once, and are no smaller
    assert rows2[0]["replay/online_size"] + rows2[0]["replay/expert_size"] >= size_before


@pytest.mark.slow
def test_killed_actor_is_restarted_and_training_goes_on(tmp_path):
    import ray

    from common.config import load_config
    from relaxrl.launcher import Run

    cfg = load_config(ROOT / "configs" / "tiny.toml", ["actors.num_online=1", "actors.num_expert=1"])
    run = Run(cfg, tmp_path, resume=False, address=None, redis_url=None)
    try:
        for _ in range(3):
            run.learner.step()
        victim = run.actors[0]
        pid = ray.get(victim.pid.remote(), timeout=60)
        t_before = run.hub.current_t_total()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        new_pid = None
        while time.monotonic() < deadline:
            try:
                new_pid = ray.get(victim.pid.remote(), timeout=10)
                if new_pid != pid:
                    break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                pass  # still restarting (a loaded machine takes longer than 10 s to start a worker)
            time.sleep(0.5)
        assert new_pid is not None and new_pid != pid, "Ray did not restart the killed actor"
        for _ in range(3):
            run.learner.step()
        # the restarted actor steps again: its kind's step count grows past the kill
        before = run.hub.stats()["env_steps/online"]
        deadline = time.monotonic() + 60
        while run.hub.stats()["env_steps/online"] <= before and time.monotonic() < deadline:
            # training goes on meanwhile: tiny's rate limiter (samples_per_insert) holds writers that
            # run ahead of the sampler, so a learner that stood still would stall the actors too
            run.learner.step()
        assert run.hub.stats()["env_steps/online"] > before
        assert run.hub.current_t_total() > t_before
        stats = run.replay.stats()
        assert stats["online"]["size"] > 0 and stats["expert"]["size"] > 0
        info, batch = run.replay.sample(16, 0.25, timeout=30)  # tables still decode after the kill
        assert len(batch) == 16
    finally:
        run.close()


def test_stall_watch_says_stalled_only_after_the_limit_without_a_new_step():
    from relaxrl.launcher import StallWatch

    now = [0.0]
    watch = StallWatch(30.0, clock=lambda: now[0])
    assert not watch.stalled(100)
    now[0] = 29.0
    assert not watch.stalled(100)
    now[0] = 31.0
    assert watch.stalled(100)  # 31 s without a new environment step
    assert not watch.stalled(101)  # a step resets the clock
    now[0] = 60.0
    assert not watch.stalled(101)
    assert not StallWatch(0.0, clock=lambda: 1e9).stalled(5)  # 0 = never


@pytest.mark.slow
def test_training_stops_with_a_checkpoint_when_every_actor_has_died(tmp_path):
    """Actors killed for good (no restarts left): the learner would go on replaying old data; instead the
    run stops after run.actor_stall_s with a final checkpoint and one error naming --resume."""
    import threading

    import psutil

    from common.config import load_config
    from learner.checkpoint import list_checkpoints
    from relaxrl.launcher import ActorsStoppedError, train

    cfg = load_config(ROOT / "configs" / "tiny.toml", [
        "actors.max_restarts=0", "run.actor_stall_s=15.0", "run.eval_every=0", "run.eval_episodes=0",
        "replay.samples_per_insert=0.0", "learner.max_updates=0", "learner.time_limit_s=300.0"])
    killed: list[int] = []
    done = threading.Event()

    def kill_actors_once_training_runs() -> None:
        # every actor process, each time one shows (one still starting up has no ActorProcess title yet, and a
        # single pass would miss it: a surviving actor keeps stepping and the stall watch never fires)
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and not done.is_set():
            rows = (tmp_path / "metrics.jsonl").read_text().splitlines() if (tmp_path / "metrics.jsonl").exists() else []
            if len(rows) >= 2:
                for p in psutil.Process().children(recursive=True):
                    try:
                        if "ActorProcess" in " ".join(p.cmdline()) and p.pid not in killed:
                            p.kill()
                            killed.append(p.pid)
                    except psutil.Error:
                        pass
            time.sleep(0.5)

    killer = threading.Thread(target=kill_actors_once_training_runs, daemon=True)
    killer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ActorsStoppedError, match=r"(no environment step for 15 s|an actor's loop ended \(actor \d).*--resume"):
            train(cfg, tmp_path, progress=False)
    finally:
        done.set()
    assert killed, "the test never found the actor processes to kill"
    assert time.monotonic() - t0 < 250  # stopped by the watch, not by the 300 s time limit
    last = list_checkpoints(tmp_path)[-1]
    assert int(last.stem.rpartition("-")[2]) > 0  # the final checkpoint holds the updates made
