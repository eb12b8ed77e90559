"""Faults survived and bad input refused (issue 8): real Ray, real redis-server, real EMT.

Faults (slow): Redis SIGKILLed during training and restarted; an online and an expert actor
SIGKILLed; the learner process SIGKILLed and resumed; the replay service restarted while
writers write. Bad input (fast): every row of docs/RELIABILITY.md names the test that keeps
it true, and :func:`test_reliability_doc_names_only_existing_tests` keeps the doc honest.
"""
from __future__ import annotations

import ast
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import ReplayConfig, load_config
from common.replay_tables import default_tables
from common.transition import Transition
from learner.checkpoint import list_checkpoints, load_checkpoint
from replay_service.client import ReplayClient
from replay_service.codec import VERSION, CodecError, encode
from replay_service.errors import ReplayConnectionError
from replay_service.server import redis_server_binary, start_embedded
from tests.test_replay_client import client_for, transitions

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
ENV = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))


# ----------------------------------------------------------------------------- helpers


def store_raw(client: ReplayClient, table: str, key: int, data: bytes) -> None:
    """Overwrite the stored bytes of item ``key`` directly in Redis, bypassing the codec."""
    k = client.keys[table]
    if hasattr(k, "item"):  # layout 2: one Redis string per item
        client._call("SET", k.item(key), data)
    else:  # layout 1: a hash slot -> payload
        client._call("HSET", k.items, key % client.specs[table].max_size, data)


def live_items(client: ReplayClient, table: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(keys, priorities, decoded transitions) of every committed item of ``table``; decoding must not fail."""
    keys, pr = client.priorities(table)
    keys, pr = keys[pr > 0], pr[pr > 0]  # priority 0: reserved by a writer, payload not committed yet
    items = []
    for chunk in np.array_split(keys, max(1, len(keys) // 500)):
        items += client.items(table, chunk)
    return keys, pr, items


def pids_of(run) -> list[int]:
    import ray

    return [ray.get(a.pid.remote(), timeout=60) for a in run.actors]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


# ----------------------------------------------------------------------------- faults during training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A live tiny run in this process: Ray, embedded Redis (appendfsync always), one online + one expert actor."""
    from common.config import load_config
    from relaxrl.launcher import Run

    cfg = load_config(TINY, ["replay.appendfsync='always'", "replay.online_max_size=100000",
                             "replay.expert_max_size=100000", "actors.num_online=1", "actors.num_expert=1"])
    run = Run(cfg, tmp_path_factory.mktemp("run"), resume=False, address=None, redis_url=None)
    try:
        for _ in range(2):
            run.learner.step()
        yield run
    finally:
        run.close(timeout_s=5)  # actors blocked by the rate limiter (nobody samples now) are killed, not awaited


@pytest.mark.slow
def test_killed_online_and_expert_actors_are_restarted_and_no_table_is_corrupted(tiny_run):
    import ray

    run = tiny_run
    before = pids_of(run)
    stats0 = run.hub.stats()
    for pid in before:  # actors[0] is online, actors[1] expert
        os.kill(pid, signal.SIGKILL)

    def restarted():
        try:
            now = pids_of(run)
        except ray.exceptions.RayActorError:
            return None
        return now if all(a != b for a, b in zip(now, before)) else None

    wait_for(restarted, 120, "Ray to restart both actors")
    for _ in range(3):
        run.learner.step()
    wait_for(lambda: all(run.hub.stats()[f"env_steps/{k}"] > stats0[f"env_steps/{k}"] + 8
                         for k in ("online", "expert")), 90, "both restarted actors to step again")
    assert run.hub.current_t_total() > stats0["t_total"]
    for table in ("online", "expert"):
        keys, _, items = live_items(run.replay, table)
        assert len(keys) > 0 and all(isinstance(t, Transition) for t in items)
        assert len(np.unique(keys)) == len(keys)


@pytest.mark.slow
def test_redis_sigkill_during_training_loses_no_acknowledged_item_and_training_continues(tiny_run):

    run = tiny_run
    run.learner.step()
    wait_for(lambda: all(len(live_items(run.replay, t)[0]) for t in ("online", "expert")), 60,
             "both tables to hold items")
    updates = run.learner.counters.updates
    # with the learner paused, what Redis acknowledged so far (and the priorities the learner set)
    snapshot = {t: dict(zip(*(a.tolist() for a in live_items(run.replay, t)[:2]))) for t in ("online", "expert")}
    assert snapshot["online"] and snapshot["expert"]
    old = run.embedded
    old.kill()  # SIGKILL while the actors are inserting
    time.sleep(1.0)  # the actors' inserts fail and back off meanwhile
    run.embedded = start_embedded(old.data_dir, appendfsync="always")
    assert run.embedded.port == old.port  # same URL: every client reconnects by itself
    for table, before in snapshot.items():
        keys, pr, items = live_items(run.replay, table)
        stored = dict(zip(keys.tolist(), pr.tolist()))
        missing = set(before) - set(stored)
        assert not missing, f"{table}: {len(missing)} acknowledged items lost"
        assert all(stored[k] == p for k, p in before.items()), f"{table}: priorities changed"
        assert all(isinstance(t, Transition) for t in items)
    inserts = {t: s["inserts"] for t, s in run.replay.stats().items()}
    t_total = run.hub.current_t_total()
    for _ in range(3):
        run.learner.step()  # the learner's client reconnected too
    assert run.learner.counters.updates == updates + 3
    wait_for(lambda: run.replay.stats()["online"]["inserts"] > inserts["online"], 90, "actors to insert again")
    # the actors report their steps to the coordinator after inserting them: t_total follows
    wait_for(lambda: run.hub.current_t_total() > t_total, 60, "t_total to advance")


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


_TRAIN = [sys.executable, "-m", "relaxrl.cli", "train", "--no-progress"]
_RESUME_SETS = ["--set", "learner.checkpoint_every=10", "--set", "run.eval_episodes=1"]  # rows every 5 updates


@pytest.mark.slow
def test_killed_learner_process_resumes_on_the_same_replay_tables(tmp_path):
    """`relaxrl train` SIGKILLed past a checkpoint, then --resume: the curves continue from the checkpoint (the
    killed run's later rows are gone) and the run goes on with the replay tables the killed run filled."""
    run_dir = tmp_path / "run"
    family: list = []  # every process of both runs, stopped at the end whatever happens
    try:
        killed = _train_and_kill_past_a_checkpoint(tmp_path, run_dir, family)
        _resume_until_it_grows_then_interrupt(tmp_path, run_dir, killed, family)
    finally:
        for child in family:  # whatever the killed run left running and the resume did not stop
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                child.kill()
    _check_the_curves_continue_from_the_checkpoint(run_dir, killed)
    _check_the_tables_are_the_killed_runs(run_dir, killed)


def _train_and_kill_past_a_checkpoint(tmp_path: Path, run_dir: Path, family: list) -> dict:
    """A tiny run SIGKILLed after a metrics row past a checkpoint; what it left: its config, the newest
    checkpoint's updates and t_total, its metrics rows, the stats of its tables."""
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_TRAIN + ["--config", str(TINY), "--run-dir", str(run_dir), *_RESUME_SETS,
                                          "--set", "learner.max_updates=100000"],  # runs until killed / interrupted
                                cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    family.append(psutil.Process(proc.pid))

    def past_a_checkpoint() -> bool:  # a row logged after the newest checkpoint (update 15, 25, ...)
        rows = _metrics(run_dir)
        return proc.poll() is not None or (len(rows) >= 3 and rows[-1]["updates"] % 10 == 5)

    wait_for(past_a_checkpoint, 240, "a metrics row after a checkpoint", every=0.1)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    family += psutil.Process(proc.pid).children(recursive=True)
    cfg = load_config(run_dir / "config.toml")
    url = f"redis://127.0.0.1:{(run_dir / 'redis' / 'redis.port').read_text().strip()}/0"
    os.kill(proc.pid, signal.SIGKILL)  # the learner (and launcher) dies mid-update
    proc.wait(30)
    last = list_checkpoints(run_dir)[-1]
    # the replay state the killed run left behind (its redis-server outlives it)
    return {"cfg": cfg, "ckpt_updates": int(last.stem.split("-")[1]),
            "t_ckpt": load_checkpoint(last)["counters"]["t_total"], "rows": _metrics(run_dir),
            "stats": ReplayClient(url, cfg.replay).stats()}


def _resume_until_it_grows_then_interrupt(tmp_path: Path, run_dir: Path, killed: dict, family: list) -> None:
    """`relaxrl train --resume` until it logged past the killed run's rows with its actors stepping, then Ctrl-C:
    final checkpoint and plots, exit 130 (interrupted)."""
    old_max = max(r["updates"] for r in killed["rows"])
    with open(tmp_path / "resumed.log", "w") as log:
        resumed = subprocess.Popen(_TRAIN + ["--resume", str(run_dir), *_RESUME_SETS], cwd=tmp_path, env=ENV,
                                   stdout=log, stderr=subprocess.STDOUT)
    family.append(psutil.Process(resumed.pid))

    def grown() -> bool:  # the resumed run logged past the killed run's rows, and its actors stepped
        rows = _metrics(run_dir)
        return resumed.poll() is not None or (rows[-1]["updates"] > old_max + 5 and rows[-1]["t_total"] > killed["t_ckpt"])

    wait_for(grown, 180, "the resumed run's t_total to grow")
    assert resumed.poll() is None, (tmp_path / "resumed.log").read_text()[-3000:]
    resumed.send_signal(signal.SIGINT)
    assert resumed.wait(180) == 130, (tmp_path / "resumed.log").read_text()[-3000:]


def _check_the_curves_continue_from_the_checkpoint(run_dir: Path, killed: dict) -> None:
    """The killed run's rows past its last checkpoint are gone: the curves never run backwards (issue 27); the
    resumed rows continue updates and t_total from the checkpoint, never from 0."""
    rows, rows_before, ckpt_updates, t_ckpt = _metrics(run_dir), killed["rows"], killed["ckpt_updates"], killed["t_ckpt"]
    assert [r["updates"] for r in rows] == sorted({r["updates"] for r in rows})
    assert [r["t_total"] for r in rows] == sorted(r["t_total"] for r in rows)
    assert [r for r in rows if r["updates"] <= ckpt_updates] == [r for r in rows_before if r["updates"] <= ckpt_updates]
    new = [r for r in rows if r["updates"] > ckpt_updates]
    assert len(new) >= 2 and len(rows_before) > len([r for r in rows_before if r["updates"] <= ckpt_updates]), \
        "the test needs rows logged after the checkpoint the killed run left"
    assert [r["updates"] for r in new] == list(range(ckpt_updates + 5, ckpt_updates + 5 * len(new) + 1, 5))
    assert all(r["t_total"] >= t_ckpt > 0 for r in new)
    assert new[-1]["t_total"] > t_ckpt and load_checkpoint(run_dir)["counters"]["updates"] >= new[-1]["updates"]


def _check_the_tables_are_the_killed_runs(run_dir: Path, killed: dict) -> None:
    """The same tables: the resumed run's first sample already had them full, and they only grew."""
    before = killed["stats"]
    srv = start_embedded(run_dir / "redis")
    try:
        after = ReplayClient(srv.url, killed["cfg"].replay)
        stats = after.stats()
        assert stats["online"]["inserts"] > before["online"]["inserts"]
        for table in ("online", "expert"):
            assert stats[table]["inserts"] >= before[table]["inserts"]
            assert stats[table]["size"] >= before[table]["size"]
            keys, _, items = live_items(after, table)
            assert all(isinstance(t, Transition) for t in items)
        assert live_items(after, "online")[0].max() >= before["online"]["inserts"]  # keys continue after the old
    finally:
        srv.stop()


def test_an_orphaned_embedded_redis_is_shut_down_and_its_data_kept(tmp_path):
    """A `relaxrl train` killed by SIGKILL leaves its redis-server running; the next start on the dir stops it first."""
    import psutil
    import redis

    d = tmp_path / "redis"
    code = ("import os, signal, sys\n"
            "from replay_service.server import start_embedded\n"
            "from replay_service.client import ReplayClient\n"
            "from common.config import ReplayConfig\n"
            "from tests.test_replay_client import transitions\n"
            "srv = start_embedded(sys.argv[1])\n"
            "c = ReplayClient(srv.url, ReplayConfig(namespace='orphan'))\n"
            "c.create_tables()\n"
            "c.insert('online', transitions(range(20)), priorities=[float(i + 1) for i in range(20)])\n"
            "print(srv.pid, srv.port, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code, str(d)], env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    orphan_pid, port = map(int, p.stdout.split())
    try:
        assert psutil.pid_exists(orphan_pid)  # the owner died, its server did not
        srv = start_embedded(d)
        try:
            assert srv.port == port
            assert redis.Redis(port=srv.port).info("server")["process_id"] == srv.pid != orphan_pid
            assert not psutil.pid_exists(orphan_pid) or psutil.Process(orphan_pid).status() == psutil.STATUS_ZOMBIE
            keys, pr = ReplayClient(srv.url, ReplayConfig(namespace="orphan")).priorities("online")
            assert keys.tolist() == list(range(20)) and pr.tolist() == [float(i + 1) for i in range(20)]
        finally:
            srv.stop()
    finally:
        if psutil.pid_exists(orphan_pid) and psutil.Process(orphan_pid).status() != psutil.STATUS_ZOMBIE:
            os.kill(orphan_pid, signal.SIGKILL)


def test_a_data_dir_in_use_is_refused(tmp_path):
    from replay_service.errors import ReplayConfigError

    srv = start_embedded(tmp_path)
    try:
        with pytest.raises(ReplayConfigError, match="in use"):
            start_embedded(tmp_path)
        assert srv.alive()
    finally:
        srv.stop()


# ----------------------------------------------------------------------------- replay service restarted under writers


def _writer(url: str, cfg: ReplayConfig, wid: int, stop_at: float, q) -> None:
    """Insert batches of 8 until ``stop_at``; report every acknowledged (key, identity)."""
    client = ReplayClient(url, cfg)
    acked: list[tuple[int, float]] = []
    seq, error = 0, ""
    try:
        while time.time() < stop_at:
            ident = wid * 1_000_000 + np.arange(seq, seq + 8)
            keys = client.insert("online", transitions(ident))
            acked += list(zip(keys.tolist(), ident.tolist()))
            seq += 8
    except Exception as e:  # reported, so the test fails loudly rather than hanging
        error = f"{type(e).__name__}: {e}"
    q.put((wid, acked, error))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_replay_service_restarted_while_writers_write_loses_nothing_silently(tmp_path, how):
    srv = start_embedded(tmp_path / "redis", appendfsync="always")
    cfg = ReplayConfig(tables=default_tables(online_max_size=200_000), namespace="restart", connect_timeout=60.0)
    client = ReplayClient(srv.url, cfg)
    client.create_tables()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    stop_at = time.time() + 6.0
    procs = [ctx.Process(target=_writer, args=(srv.url, cfg, w, stop_at, q)) for w in range(3)]
    for p in procs:
        p.start()
    try:
        wait_for(lambda: client.stats()["online"]["inserts"] >= 200, 30, "writers to start", every=0.05)
        srv.stop() if how == "SIGTERM" else srv.kill()
        time.sleep(0.5)  # writers block and retry meanwhile
        srv = start_embedded(tmp_path / "redis", appendfsync="always")
        results = [q.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert [r[2] for r in results] == ["", "", ""], "a writer gave up"
        acked = [a for r in results for a in r[1]]
        keys = [k for k, _ in acked]
        stats = client.stats()["online"]
        assert len(set(keys)) == len(keys)  # no key acknowledged twice
        assert stats["inserts"] == len(acked) == stats["size"]  # none lost, none doubled
        items = client.items("online", keys)
        assert [t.reward for t in items] == [float(i) for _, i in acked]
        assert stats["inserts"] > 200 + 3 * 8  # the writers kept going after the restart
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        srv.stop()


# ----------------------------------------------------------------------------- bad stored data


def _check_corrupt_item_handling(client: ReplayClient, key: int, data: bytes, n: int) -> None:
    """Sample after item ``key`` was overwritten with ``data``: a clear CodecError or quarantine, others intact."""
    before = {k: t.reward for k, t in zip(range(n), client.items("online", range(n))) if k != key}
    _, prio_before = client.priorities("online")
    store_raw(client, "online", key, data)
    try:
        info, batch = client.sample(8 * n, 0.0)
    except CodecError as e:
        assert f"key {key}" in str(e) and "online" in str(e)
    else:  # quarantined: it is no longer drawn, everything drawn decodes
        assert key not in info.key.tolist() and len(batch) == 8 * n
    others = [k for k in range(n) if k != key]
    assert [t.reward for t in client.items("online", others)] == [before[k] for k in others]
    _, prio_after = client.priorities("online")
    np.testing.assert_array_equal(np.delete(prio_after, key), np.delete(prio_before, key))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"RXRL\x01\x00" + b)),
       key=st.integers(0, 5))
def test_random_bytes_in_a_table_are_refused_or_quarantined_and_the_rest_is_intact(redis_server, data, key):
    c = client_for(redis_server, online=16)
    try:
        c.insert("online", transitions(range(6)))
        _check_corrupt_item_handling(c, key, data, 6)
    finally:
        c._call("DEL", *c._call("KEYS", f"{c.cfg.namespace}:*"))


@pytest.mark.parametrize("kind", ["truncated", "codec version", "trailing bytes", "empty"])
def test_a_damaged_stored_item_is_refused_or_quarantined(redis_server, kind):
    c = client_for(redis_server)
    c.insert("online", transitions(range(6)))
    good = encode(transitions([2.0])[0])
    data = {"truncated": good[:-7], "codec version": good[:4] + (VERSION + 1).to_bytes(2, "little") + good[6:],
            "trailing bytes": good + b"\0", "empty": b""}[kind]
    _check_corrupt_item_handling(c, 2, data, 6)


@pytest.mark.parametrize("bad", ["shape", "dtype", "nan", "not a transition"])
def test_a_bad_transition_in_a_batch_inserts_nothing(redis_server, bad):
    c = client_for(redis_server)
    c.insert("online", transitions([0.0]))
    batch = transitions([1.0, 2.0, 3.0])
    t = batch[1]
    if bad == "shape":
        t.action = np.zeros((4, 3))
    elif bad == "dtype":
        t.action = np.full(t.action.shape, "x")
    elif bad == "nan":
        t.obs.forces = t.obs.forces.copy()
        t.obs.forces[0, 0] = np.nan
    else:
        batch[1] = {"obs": None}
    with pytest.raises(CodecError):
        c.insert("online", batch)
    assert c.stats()["online"]["inserts"] == 1 and c.items("online", [0])[0].reward == 0.0


# ----------------------------------------------------------------------------- bad environment input


def test_infinite_forces_from_a_calculator_end_the_episode_and_store_finite_data():
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes

    from actors.env import RelaxEnv
    from common.config import EnvConfig

    class InfAfter(Calculator):
        implemented_properties = ["energy", "forces"]

        def __init__(self, bad_call: int):
            super().__init__()
            self.bad_call, self.calls = bad_call, 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            self.calls += 1
            pos = atoms.positions - atoms.positions.mean(axis=0)
            forces = np.full_like(pos, np.inf) if self.calls >= self.bad_call else -0.5 * pos
            self.results = {"energy": 0.25 * float((pos ** 2).sum()), "forces": forces}

    env = RelaxEnv(EnvConfig(), calculator=InfAfter(bad_call=2))
    obs = env.reset(Atoms("Cu2", positions=[[0, 0, 0], [3.0, 0, 0]]))
    step = env.step(np.full((2, 3), 0.01))
    assert step.truncated and "non-finite" in step.info["error"]
    t = Transition(obs, np.full((2, 3), 0.01), step.info["actual_move"], float(step.reward), False, True, step.obs,
                   float(step.info["a_back"]))
    encode(t)  # what the actor stores is finite


def test_nan_actions_from_a_diverged_policy_are_applied_as_no_move_and_not_stored(redis_server):
    import torch

    from helpers import actor_loop_on_redis

    actor, _, replay = actor_loop_on_redis(redis_server.url, "online", TINY, ["actors.insert_batch=1"])
    with torch.no_grad():
        for p in actor.policy.actor.parameters():
            p.fill_(float("nan"))
    records = [actor.step() for _ in range(3)]
    actor.adder.flush(force=True)
    assert [r.nonfinite_actions for r in records] == [len(actor.envs)] * 3
    assert actor.nonfinite_actions == 3 * len(actor.envs)
    assert replay.sizes()["online"] == 0  # nothing non-finite reached the table


# ----------------------------------------------------------------------------- bad configuration and addresses


@pytest.mark.parametrize("override, message", [
    ("learner.batchsize=8", "unknown key(s) learner.batchsize"),
    ("learner.batch_size='big'", "learner.batch_size must be of type int"),
    ("replay.appendfsync='sometimes'", "appendfsync"),
    ("lerner.batch_size=8", "unknown section"),
])
def test_config_typos_and_wrong_types_stop_train_with_one_line(tmp_path, capsys, override, message):
    from relaxrl.cli import main

    rc = main(["train", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--set", override, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "redis").exists()


def _redis_with_password(tmp_path: Path, password: str) -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--requirepass", password,
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    wait_for(lambda: _answers(redis.Redis(port=port, password=password)), 30, "redis-server with requirepass", 0.05)
    return proc, port


def _answers(r) -> bool:
    import redis

    try:
        return bool(r.ping())
    except redis.exceptions.ConnectionError:
        return False


def test_a_wrong_redis_password_is_one_clear_error_and_the_data_is_untouched(tmp_path, capsys, monkeypatch):
    import redis

    from relaxrl.cli import main

    proc, port = _redis_with_password(tmp_path, "right-pw")
    try:
        ok = ReplayClient(f"redis://:right-pw@127.0.0.1:{port}/0", ReplayConfig(namespace="pw"))
        ok.create_tables()
        ok.insert("online", transitions([1.0, 2.0]))
        for url, says in ((f"redis://:wrong-pw@127.0.0.1:{port}/0", "refused the password"),
                          (f"redis://127.0.0.1:{port}/0", "requires a password")):
            with pytest.raises(ReplayConnectionError, match=says) as e:
                ReplayClient(url, ReplayConfig(namespace="pw", connect_timeout=1.0)).sizes()
            assert "wrong-pw" not in str(e.value)
            # the README's advice (issue 27): the variable or a password file, never a password in the URL
            assert "RELAXRL_REDIS_PASSWORD" in str(e.value) and "--redis-password-file" in str(e.value)
            assert "redis://:PASSWORD@" not in str(e.value)
        monkeypatch.setenv("RELAXRL_REDIS_PASSWORD", "wrong-pw")  # the way to give it (not in the URL: ps shows that)
        rc = main(["train", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--no-progress",
                   "--redis-url", f"redis://127.0.0.1:{port}/0"])
        err = capsys.readouterr().err
        assert rc == 2 and "refused the password" in err and err.count("\n") == 1 and "wrong-pw" not in err
        assert [t.reward for t in ok.items("online", [0, 1])] == [1.0, 2.0]
        assert redis.Redis(port=port, password="right-pw").dbsize() > 0
    finally:
        proc.terminate()
        proc.wait(30)


def test_an_unreachable_redis_url_stops_train_with_one_line(tmp_path, capsys):
    from relaxrl.cli import main

    rc = main(["train", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--no-progress",
               "--redis-url", "redis://127.0.0.1:1/0", "--set", "replay.connect_timeout=0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach Redis at redis://127.0.0.1:1/0" in err and err.count("\n") == 1


@pytest.mark.slow
def test_an_unreachable_ray_address_is_exit_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "relaxrl.cli", "train", "--config", str(TINY), "--run-dir",
                        str(tmp_path / "run"), "--address", "127.0.0.1:1", "--no-progress"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("relaxrl train: error: cannot reach Ray at --address 127.0.0.1:1")
    assert not (tmp_path / "run" / "redis").exists()  # nothing was started


def test_resume_with_another_network_size_is_a_checkpoint_error(tmp_path):
    from common.config import load_config
    from learner.checkpoint import CheckpointError
    from learner.learner import Learner
    from learner.policy import load_policy

    small = load_config(TINY)
    Learner(small, None, tmp_path).checkpoint()
    big = load_config(TINY, ["network.channels=16"])
    with pytest.raises(CheckpointError, match="does not fit this run's networks"):
        Learner(big, None, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="different network config: channels"):
        load_policy(tmp_path, expect_config=big)


# ----------------------------------------------------------------------------- issue 27: never silently wrong


def _run_with_identity(run_dir: Path, run_id: str, *overrides: str) -> Path:
    """A run directory as `relaxrl train` leaves it: config.toml and a learner checkpoint, both with ``run.id``."""
    from common.config import dump_config, load_config
    from learner.learner import Learner

    cfg = load_config(TINY, [f"run.id={json.dumps(run_id)}", *overrides])
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.toml")
    return Learner(cfg, None, run_dir).checkpoint()


@pytest.mark.parametrize("command", ["relax", "eval", "resume"])
def test_a_checkpoint_of_another_run_is_refused_naming_both_runs(tmp_path, capsys, command):
    from ase.build import bulk
    from ase.io import write

    from relaxrl.cli import main

    theirs = _run_with_identity(tmp_path / "theirs", "aaaa1111", "run.name=\"other\"")
    mine = tmp_path / "mine"
    _run_with_identity(mine, "bbbb2222")
    stray = mine / "checkpoints" / "ckpt-00000500.pt"  # copied in: the newest, so it would be used
    stray.write_bytes(theirs.read_bytes())
    src = tmp_path / "in.extxyz"
    write(src, bulk("Cu", cubic=True))
    argv = {"relax": ["relax", str(src), "--checkpoint", str(mine), "--out", str(tmp_path / "out.cif")],
            "eval": ["eval", "--checkpoint", str(mine), "--structures", str(tmp_path), "--no-progress",
                     "--out", str(tmp_path / "ev")],
            "resume": ["train", "--resume", str(mine), "--no-progress"]}[command]
    before = stray.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "belongs to another run" in err and "run 'other' (id aaaa1111)" in err and "run 'tiny' (id bbbb2222)" in err
    assert stray.read_bytes() == before and not (tmp_path / "out.cif").exists() and not (mine / "redis").exists()


def test_new_runs_get_their_own_identity_and_resumes_keep_it(tmp_path, monkeypatch):
    """run.id: a fresh one for every new run (a preset or a copied config.toml holding one does not pass it on),
    kept by --resume, given to a run of an earlier version when it is resumed; --set run.id is refused."""
    import argparse

    from common.config import load_config
    from relaxrl.launcher import _run_dir_for, plan_run

    def args(**kw):
        base = dict(config=str(TINY), overrides=[], run_dir=None, resume=None, address=None, redis_url=None,
                    redis_password_file=None, trust_checkpoint_calculator=False)
        return argparse.Namespace(**{**base, **kw})

    a = plan_run(args(run_dir=str(tmp_path / "a")))
    b = plan_run(args(run_dir=str(tmp_path / "b")))
    assert len(a.cfg.run.id) == 12 and a.cfg.run.id != b.cfg.run.id
    old = tmp_path / "old"
    _run_with_identity(old, "")  # a run of an earlier version: no identity anywhere
    plan = plan_run(args(config=None, resume=str(old)))
    with _run_dir_for(plan):
        pass
    assert load_config(old / "config.toml").run.id == plan.cfg.run.id != ""
    assert plan_run(args(config=None, resume=str(old))).cfg.run.id == plan.cfg.run.id
    with pytest.raises(Exception, match="run.id"):
        plan_run(args(run_dir=str(tmp_path / "c"), overrides=["run.id=\"x\""]))


def test_a_resume_drops_the_metrics_rows_past_its_checkpoint(tmp_path):
    """A run killed after logging updates 15 and 20 past its checkpoint at 10: the resumed learner keeps the rows
    up to update 10 and drops the rest (and a line the kill cut short), so the curves never run backwards."""
    from common.config import load_config
    from learner.learner import Learner

    cfg = load_config(TINY)
    learner = Learner(cfg, None, tmp_path)
    learner.counters.updates, learner.counters.t_total = 10, 400
    learner.checkpoint()
    rows = [{"updates": u, "t_total": 40 * u} for u in (5, 10, 15, 20)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"updates": 25, "t_t')
    resumed = Learner(cfg, None, tmp_path, resume=True)
    assert resumed.counters.updates == 10 and resumed.dropped_rows == 3
    assert _metrics(tmp_path) == rows[:2]


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64])
def test_weights_of_another_dtype_are_refused(tmp_path, capsys, dtype):
    """Weights cast to int64 (or float64 under a float32 config) would be cast back silently by load_state_dict."""
    from ase.build import bulk
    from ase.io import write

    from learner.checkpoint import CheckpointError
    from learner.learner import Learner
    from relaxrl.cli import main

    ckpt = _run_with_identity(tmp_path / "run", "cccc3333")
    data = torch.load(ckpt, weights_only=True)
    for entry in ("actor", "critic"):
        data[entry] = {k: v.to(dtype) for k, v in data[entry].items()}
    torch.save(data, ckpt)
    src = tmp_path / "in.extxyz"
    write(src, bulk("Cu", cubic=True))
    assert main(["relax", str(src), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out.cif")]) == 2
    err = capsys.readouterr().err
    name = str(dtype).replace("torch.", "")
    assert err.count("\n") == 1 and f"'actor' weights are {name}" in err and "network.dtype = 'float32'" in err, err
    from common.config import load_config

    with pytest.raises(CheckpointError, match=f"weights are {name}"):
        Learner(load_config(tmp_path / "run" / "config.toml"), None, tmp_path / "run", resume=True)


@pytest.mark.parametrize("override, message", [
    ("run.seed=-1", "run.seed must be an integer seed in 0..2147483647"),
    ("run.seed=12345678901234567890", "run.seed must be an integer seed in 0..2147483647"),
    ("env.max_step=1000", "env.max_step must be a positive bound in Å of at most 1"),
])
def test_eval_refuses_a_seed_or_a_search_size_out_of_range_before_the_work(tmp_path, capsys, override, message):
    from relaxrl.cli import main

    rc = main(["eval", "--optimizers", "bfgs", "--set", override, "--no-progress", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "ev").exists()


def test_run_files_follow_the_umask(tmp_path):
    """Run files are created with the process's umask: 0644 under the usual 022 (they hold no secret: no password
    is ever written, tests/test_train_cli.py checks), 0600 for a user who sets umask 077 (docs/RELIABILITY.md)."""
    from common.config import dump_config, load_config
    from learner.learner import Learner

    old = os.umask(0o077)
    try:
        cfg = load_config(TINY)
        dump_config(cfg, tmp_path / "config.toml")
        learner = Learner(cfg, None, tmp_path, t_total=lambda: 0)
        ckpt = learner.checkpoint()
        learner.log_row()
    finally:
        os.umask(old)
    for path in (tmp_path / "config.toml", ckpt, tmp_path / "metrics.jsonl"):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_checkpoint_holding_a_search_sizing_value_out_of_range_is_refused(tmp_path, capsys):
    """A checkpoint whose config says env.max_step = 1000 (a 2000 Å collision cutoff) hung `relax`."""
    from ase.build import bulk
    from ase.io import write

    from relaxrl.cli import main

    ckpt = _run_with_identity(tmp_path / "run", "dddd4444")
    data = torch.load(ckpt, weights_only=True)
    data["config"]["env"]["max_step"] = 1000.0
    torch.save(data, ckpt)
    src = tmp_path / "in.extxyz"
    write(src, bulk("Cu", cubic=True))
    assert main(["relax", str(src), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out.cif")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its config is not valid" in err and "env.max_step must be" in err, err


@pytest.mark.parametrize("command", ["relax", "eval", "train"])
def test_a_flat_cell_is_one_line_in_every_command(tmp_path, capsys, command):
    """c = a + b gave LinAlgError tracebacks in relax, eval and train (and c = a + b + 1e-6 ẑ a 4 GB search)."""
    from ase.build import bulk
    from ase.io import write

    from relaxrl.cli import main

    cu = bulk("Cu", cubic=True)
    a, b, _ = np.array(cu.cell)
    cu.set_cell([a, b, a + b])
    structures = tmp_path / "structures"
    structures.mkdir()
    write(structures / "flat.extxyz", cu)
    ckpt = _run_with_identity(tmp_path / "run", "eeee5555")
    argv = {"relax": ["relax", str(structures / "flat.extxyz"), "--checkpoint", str(ckpt), "--out",
                      str(tmp_path / "out.cif")],
            "eval": ["eval", "--checkpoint", str(ckpt), "--structures", str(structures), "--no-progress", "--out",
                     str(tmp_path / "ev")],
            "train": ["train", "--config", str(TINY), "--set", f"curriculum.source={json.dumps(str(structures))}",
                      "--run-dir", str(tmp_path / "new-run"), "--no-progress"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "its cell is singular" in err, err
    assert not (tmp_path / "new-run").exists() and not (tmp_path / "ev").exists()


def test_eval_refuses_a_dangling_link_as_out_before_the_work(tmp_path, capsys):
    from relaxrl.cli import main

    (tmp_path / "ev").symlink_to(tmp_path / "gone" / "ev")
    assert main(["eval", "--optimizers", "bfgs", "--no-progress", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out " + str(tmp_path / "ev") + " is a symbolic link to" in err, err
    assert not (tmp_path / "gone").exists()


def test_the_overlap_error_of_relax_gives_advice_relax_can_follow(tmp_path, capsys):
    """relax has no env.min_distance_factor to lower: it names the checkpoint's factor and what to do instead."""
    from ase import Atoms
    from ase.io import write

    from relaxrl.cli import main

    ckpt = _run_with_identity(tmp_path / "run", "ffff6666")
    write(tmp_path / "close.xyz", Atoms("Cu2", positions=[[0, 0, 0], [1.0, 0, 0]]))
    assert main(["relax", str(tmp_path / "close.xyz"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o.cif")]) == 2
    err = capsys.readouterr().err
    assert "overlap at 1.000 Å" in err and "use a checkpoint trained with a lower env.min_distance_factor" in err, err
    assert "or lower env.min_distance_factor" not in err


# ----------------------------------------------------------------------------- the doc stays true

TEST_REF = re.compile(r"`?(tests/test_[a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)")


def test_reliability_doc_names_only_existing_tests():
    """Every row of docs/RELIABILITY.md's bad-input table names at least one test, and each named test exists."""
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text()
    section = doc.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and not re.match(r"^\|[\s\-|]+\|$", line)][1:]
    assert len(rows) >= 15
    defined: dict[str, set[str]] = {}
    for row in rows:
        refs = TEST_REF.findall(row)
        assert refs, f"row names no test: {row}"
        for path, name in refs:
            if path not in defined:
                tree = ast.parse((ROOT / path).read_text())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"{path}::{name} named in docs/RELIABILITY.md does not exist"
