"""Replay under faults and load: SIGKILL of redis-server mid-insert, concurrent writers and a sampler."""
from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid

import numpy as np

from common.config import ReplayConfig
from common.replay_tables import MinSize, default_tables
from replay_service.client import ReplayClient
from replay_service.errors import ReplayConnectionError
from replay_service.server import start_embedded
from tests.test_replay_client import transitions


def test_sigkill_mid_insert_loses_no_acknowledged_item(tmp_path):
    srv = start_embedded(tmp_path / "redis", appendfsync="always")
    cfg = ReplayConfig(tables=default_tables(online_max_size=100_000), namespace="crash", connect_timeout=0.5)
    client = ReplayClient(srv.url, cfg, seed=0)
    client.create_tables()
    acked: dict[int, float] = {}
    failure: list[Exception] = []

    def writer() -> None:
        rng = np.random.default_rng(1)
        try:
            while True:
                pr = rng.uniform(0.1, 5.0, 16)
                keys = client.insert("online", transitions(range(16)), priorities=pr)
                acked.update(zip(keys.tolist(), pr.tolist()))
        except ReplayConnectionError as e:
            failure.append(e)

    th = threading.Thread(target=writer)
    th.start()
    while len(acked) < 400:
        time.sleep(0.01)
    srv.kill()  # SIGKILL while the writer is inserting
    th.join(30)
    assert failure and "127.0.0.1" in str(failure[0])
    srv2 = start_embedded(tmp_path / "redis", appendfsync="always")
    try:
        assert srv2.port == srv.port  # same URL: old clients reconnect
        after = ReplayClient(srv2.url, cfg)
        after.create_tables()
        keys, pr = after.priorities("online")
        stored = dict(zip(keys.tolist(), pr.tolist()))
        assert len(acked) >= 400 and set(acked) <= set(stored)
        assert all(stored[k] == p for k, p in acked.items())
        assert keys.tolist() == list(range(len(keys)))  # no holes, no duplicates
        assert all(t is not None for t in after.items("online", list(acked)[:50]))
        client.insert("online", transitions([1.0]))  # the first client reconnects by itself
        assert after.sizes()["online"] == len(keys) + 1
    finally:
        srv2.stop()


def _writer(url: str, cfg: ReplayConfig, wid: int, seconds: float, q) -> None:
    client = ReplayClient(url, cfg)
    seq, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        client.insert("online", transitions(wid * 1_000_000 + np.arange(seq, seq + 8)))
        seq += 8
    q.put((wid, seq))


def test_four_writers_and_a_sampler_lose_and_duplicate_nothing(redis_server):
    cfg = ReplayConfig(tables=default_tables(online_max_size=200_000, online_limiter=MinSize(8)),
                       namespace=f"soak{uuid.uuid4().hex[:6]}")
    client = ReplayClient(redis_server.url, cfg, seed=0)
    client.create_tables()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(redis_server.url, cfg, w, 2.0, q)) for w in range(4)]
    for p in procs:
        p.start()
    sampled = 0
    rng = np.random.default_rng(0)
    while any(p.is_alive() for p in procs):
        if client.sizes()["online"] >= 8:
            info, batch = client.sample(32, 0.0, timeout=10)
            assert [t.reward for t in batch] == [t.reward for t in client.items("online", info.key)]
            client.update_priorities("online", info.key, rng.uniform(0.1, 2, 32))
            sampled += 32
    counts = dict(q.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    total = sum(counts.values())
    assert client.sizes()["online"] == total and sampled > 0
    items = client.items("online", range(total))
    rewards = np.array([t.reward for t in items])
    assert len(np.unique(rewards)) == total  # no duplicates
    for w, n in counts.items():  # nothing lost, each writer's items all there
        mine = np.sort(rewards[(rewards >= w * 1_000_000) & (rewards < (w + 1) * 1_000_000)])
        np.testing.assert_array_equal(mine, w * 1_000_000 + np.arange(n))
    s = client.stats()["online"]
    assert s["inserts"] == total and s["samples"] == sampled
