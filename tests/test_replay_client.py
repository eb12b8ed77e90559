"""Replay tables against a real redis-server: sampling law, weights, FIFO, stale updates, expert share,
rate limiting, pickling, connection errors. Each test uses its own namespace."""
from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import threading
import time
import uuid

import numpy as np
import pytest
from scipy import stats

from common.config import ReplayConfig
from common.errors import ConfigError
from common.replay_tables import MinSize, NoLimit, SampleToInsertRatio, TableSpec, default_tables
from replay_service.client import ReplayClient
from replay_service.codec import CodecError, encode
from replay_service.errors import RateLimiterTimeout, ReplayConfigError, ReplayConnectionError, ReplayError
from tests.test_replay_codec import make_transition


def transitions(rewards) -> list:
    """Small transitions whose reward carries an identity (so a test can tell them apart)."""
    base = make_transition(3, expert=False)
    out = []
    for r in rewards:
        t = make_transition(3, expert=False)
        t.obs, t.next_obs = base.obs, base.next_obs
        t.reward = float(r)
        out.append(t)
    return out


def client_for(redis_server, seed: int = 0, expert: int = 100, online: int = 100, alpha: float = 0.6,
               limiter=None, tables=None, **kw) -> ReplayClient:
    """A client of fresh tables: by default the two of today ('online' with ``limiter``, else MinSize(1)), or ``tables``."""
    tables = tables or default_tables(expert, online, alpha, online_limiter=limiter or MinSize(1))
    cfg = ReplayConfig(tables=tables, **{"namespace": f"t{uuid.uuid4().hex[:8]}", "connect_timeout": 5.0, **kw})
    c = ReplayClient(redis_server.url, cfg, seed=seed)
    c.create_tables()
    return c


def test_sampling_frequencies_follow_priority_to_the_alpha(redis_server):
    c = client_for(redis_server, alpha=0.6, online=64)
    pr = np.arange(1, 41, dtype=float)
    keys = c.insert("online", transitions(range(40)), priorities=pr)
    counts = np.zeros(40)
    for _ in range(150):
        info, _ = c.sample(256, 0.0)
        counts += np.bincount(info.key, minlength=40)
    expected = pr ** 0.6 / (pr ** 0.6).sum()
    assert counts.sum() == 150 * 256
    chi = stats.chisquare(counts, expected * counts.sum())
    assert chi.pvalue > 1e-3, chi
    info, _ = c.sample(256, 0.0)
    np.testing.assert_allclose(info.probability, expected[info.key], rtol=1e-12)
    assert set(np.unique(info.key)) <= set(keys.tolist())


def test_importance_weights_match_the_formula(redis_server):
    c = client_for(redis_server, alpha=0.7)
    pr = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 0.25])
    c.insert("online", transitions(range(6)), priorities=pr)
    c.insert("expert", transitions(range(3)), priorities=[3.0, 1.0, 2.0])
    beta = 0.4
    info, batch = c.sample(64, 0.25, beta=beta)
    for table, p in (("online", pr), ("expert", np.array([3.0, 1.0, 2.0]))):
        m = info.table == table
        P = p ** 0.7 / (p ** 0.7).sum()
        N = len(p)
        expected = (N * P[info.key[m]]) ** -beta / ((N * P) ** -beta).max()
        np.testing.assert_allclose(info.weight[m], expected, rtol=1e-12)
        np.testing.assert_allclose(info.probability[m], P[info.key[m]], rtol=1e-12)
        assert (info.table_size[m] == N).all()
    assert [t.reward for t in batch] == [float(k) for k in info.key]


def test_fifo_eviction_keeps_the_newest_items(redis_server):
    c = client_for(redis_server, online=16)
    keys = c.insert("online", transitions(range(40)), priorities=np.arange(1, 41.0))
    assert keys.tolist() == list(range(40))
    assert c.sizes()["online"] == 16
    live, pr = c.priorities("online")
    assert live.tolist() == list(range(24, 40))
    np.testing.assert_array_equal(pr, np.arange(25, 41.0))
    info, batch = c.sample(200, 0.0)
    assert info.key.min() >= 24
    assert [t.reward for t in batch] == [float(k) for k in info.key]
    assert c.items("online", [3, 30]) [0] is None


def test_new_items_get_the_current_max_priority(redis_server):
    c = client_for(redis_server)
    c.insert("online", transitions([0]))
    assert c.priorities("online")[1].tolist() == [1.0]
    c.insert("online", transitions([1, 2]), priorities=[0.5, 7.0])
    c.insert("online", transitions([3]))
    assert c.priorities("online")[1].tolist() == [1.0, 0.5, 7.0, 7.0]
    c.update_priorities("online", [2, 3], [0.1, 0.2])
    c.insert("online", transitions([4]))
    assert c.priorities("online")[1][-1] == 1.0


def test_stale_priority_updates_are_ignored(redis_server):
    c = client_for(redis_server, online=8)
    c.insert("online", transitions(range(8)), priorities=np.ones(8))
    info, _ = c.sample(4, 0.0)
    c.insert("online", transitions(range(8, 16)), priorities=np.full(8, 2.0))  # laps every slot
    assert c.update_priorities("online", info.key, np.full(4, 50.0)) == 0
    keys, pr = c.priorities("online")
    assert keys.tolist() == list(range(8, 16)) and (pr == 2.0).all()
    assert c.update_priorities("online", [9, 100, -1], [3.0, 3.0, 3.0]) == 1  # 100: never written
    assert c.priorities("online")[1][1] == 3.0
    assert c.stats()["online"]["stale_updates"] == 4 + 2


def test_updated_priorities_change_the_sampling(redis_server):
    c = client_for(redis_server)
    keys = c.insert("online", transitions(range(10)), priorities=np.ones(10))
    c.update_priorities("online", keys, np.r_[np.full(9, 1e-6), 1.0])
    info, _ = c.sample(256, 0.0)
    assert (info.key == 9).mean() > 0.98


@pytest.mark.parametrize("expert_items,B,f,n_expert", [(50, 64, 0.25, 16), (5, 64, 0.25, 5), (50, 10, 0.3, 3),
                                                       (50, 7, 0.5, 4), (0, 8, 0.25, 0), (50, 8, 1.0, 8)])
def test_expert_share_is_exactly_round_B_f(redis_server, expert_items, B, f, n_expert):
    c = client_for(redis_server)
    c.insert("online", transitions(range(20)))
    if expert_items:
        c.insert("expert", transitions(range(expert_items)))
    info, batch = c.sample(B, f)
    assert len(batch) == B
    assert (info.table == "expert").sum() == n_expert
    assert (info.table == "online").sum() == B - n_expert


def test_rate_limiter_min_size_blocks_and_releases(redis_server):
    c = client_for(redis_server, limiter=MinSize(10))
    c.insert("online", transitions(range(5)))
    with pytest.raises(RateLimiterTimeout, match="online holds 5 items, min_size_to_sample is 10"):
        c.sample(4, 0.0, timeout=0.2)
    threading.Timer(0.3, lambda: c.insert("online", transitions(range(5, 10)))).start()
    info, batch = c.sample(4, 0.0, timeout=20)
    assert len(batch) == 4 and c.sizes()["online"] == 10
    assert c.stats()["online"]["sample_waits"] == 2


def test_a_stopping_writer_gives_up_a_blocked_insert_at_once(redis_server):
    """When the learner has stopped sampling, an actor's insert that waits for the rate limiter ends as soon as the
    actor is told to stop (not after its timeout): the actors of a finished run stop within seconds."""
    from actors.adder import ReplayAdder
    from replay_service.errors import InsertStopped

    c = client_for(redis_server, limiter=SampleToInsertRatio(1.0, 4, 8.0))
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    t0 = time.monotonic()
    with pytest.raises(InsertStopped, match="12 of 20 items inserted") as e:
        c.insert("online", transitions(range(20)), timeout=60, stop=stopping.is_set)
    assert 0.3 <= time.monotonic() - t0 < 10 and e.value.inserted_keys.tolist() == list(range(12))
    adder = ReplayAdder(c, c.cfg.tables, n_envs=1, n_step=1, gamma=0.9, insert_batch=4,
                        stop=stopping.is_set)  # what an actor's loop flushes through
    adder.pending["online"] += transitions(range(5))
    adder.flush(force=True)
    assert adder.dropped == 5 and not adder.pending["online"] and c.sizes()["online"] == 12


def test_an_actors_blocked_insert_waits_out_a_long_learner_pause(redis_server, monkeypatch):
    """An actor's flush (an adder with a stop signal) waits for the rate limiter however long the learner pauses
    (a checkpoint, a live evaluation on CHGNet): a client timeout there ended an Al–Fe run's online actor loop while
    its process lived on, and training went on without it. The client's own timeout is shortened here to show that
    the adder's insert does not use it."""
    from actors.adder import ReplayAdder

    c = client_for(redis_server, limiter=SampleToInsertRatio(1.0, 4, 8.0))
    c.insert("online", transitions(range(12)), timeout=1)  # the limiter's full allowance: the next insert waits
    insert = c.insert
    monkeypatch.setattr(c, "insert", lambda *a, timeout=0.2, **k: insert(*a, timeout=timeout, **k))
    with pytest.raises(RateLimiterTimeout):  # the limiter holds: a wait bound by the client's timeout ends in error
        c.insert("online", transitions(range(12, 16)))
    stopping = threading.Event()
    adder = ReplayAdder(c, c.cfg.tables, n_envs=1, n_step=1, gamma=0.9, insert_batch=4, stop=stopping.is_set)
    adder.pending["online"] += transitions(range(16, 20))
    sampler = threading.Timer(1.0, lambda: c.sample(4, 0.0, timeout=20))  # the learner comes back after 1 s
    sampler.start()
    t0 = time.monotonic()
    adder.flush(force=True)
    sampler.join()
    assert time.monotonic() - t0 >= 0.9 and adder.dropped == 0 and not adder.pending["online"]
    assert c.stats()["online"]["inserts"] == 16 and c.sizes()["online"] == 16


def test_rate_limiter_samples_per_insert_blocks_writers_until_sampled(redis_server):
    c = client_for(redis_server, limiter=SampleToInsertRatio(1.0, 4, 8.0))
    # max_diff = 1*4 + 8 = 12 inserts ahead of samples
    with pytest.raises(RateLimiterTimeout, match="12 of 20 items inserted") as e:
        c.insert("online", transitions(range(20)), timeout=0.2)
    assert e.value.inserted_keys.tolist() == list(range(12))
    sampler = threading.Thread(target=lambda: [c.sample(4, 0.0, timeout=20) for _ in range(3)])
    sampler.start()
    keys = c.insert("online", transitions(range(20, 28)), timeout=20)
    sampler.join()
    assert keys.tolist() == list(range(12, 20))
    s = c.stats()["online"]
    assert s["inserts"] == 20 and s["samples"] == 12 and s["insert_waits"] >= 1


@pytest.mark.parametrize("build,match", [
    (lambda: SampleToInsertRatio(2.0, 64, 1.0), "would deadlock"),
    (lambda: SampleToInsertRatio(0.0, 64, 1.0), "for no ratio use MinSize"),
    (lambda: MinSize(0), "an empty table cannot be sampled"),
    (lambda: TableSpec("online", 100, 1.0, rate_limiter=MinSize(200)), "can never hold"),
    (lambda: TableSpec("online", 100, 1.0, priority_exponent=-1.0), "priority_exponent"),
    (lambda: TableSpec("on:line", 100, 1.0), "a name is"),
    (lambda: ReplayConfig(tables=default_tables(expert_limiter=NoLimit(), online_limiter=NoLimit())), "every table has"),
    (lambda: ReplayConfig(tables=(TableSpec("online", 100, 0.5),)), "shares sum to 0.5"),
    (lambda: ReplayConfig(tables=(TableSpec("a", 100, 0.5), TableSpec("a", 100, 0.5))), "more than once"),
])
def test_settings_that_cannot_work_are_rejected_at_build(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_batch_too_large_for_the_error_buffer_is_rejected(redis_server):
    c = client_for(redis_server, limiter=SampleToInsertRatio(1.0, 4, 4.0))
    with pytest.raises(ConfigError, match="error_buffer >= 32.5"):
        c.create_tables(batch_size=64)
    with pytest.raises(ConfigError, match="can never be granted"):
        c.sample(64, 0.0)


def test_create_tables_is_idempotent_and_checks_settings(redis_server):
    c = client_for(redis_server, online=32)
    c.insert("online", transitions(range(3)))
    assert c.create_tables() == {"expert": "exists", "online": "exists"}
    assert c.sizes() == {"expert": 0, "online": 3}
    other = ReplayClient(redis_server.url, ReplayConfig(namespace=c.cfg.namespace, tables=default_tables(100, 64)))
    with pytest.raises(ReplayConfigError, match="max_size 32.*max_size 64"):
        other.create_tables()
    fresh = ReplayClient(redis_server.url, ReplayConfig(namespace=f"t{uuid.uuid4().hex[:8]}"))
    with pytest.raises(ReplayError, match="create_tables"):
        fresh.insert("online", transitions([1]))
    with pytest.raises(ReplayError, match="unknown replay table"):
        c.insert("offline", transitions([1]))


def test_an_undecodable_item_is_quarantined_and_sampling_goes_on(redis_server, caplog):
    c = client_for(redis_server, online=16)
    c.insert("online", transitions(range(10)), priorities=np.ones(10))
    garbage = np.random.default_rng(5).bytes(300)
    c._call("SET", c.item_key("online", 3), garbage)  # corrupt item 3 in Redis, behind the client's back
    with pytest.raises(CodecError, match="table 'online' key 3"):
        c.items("online", [3])  # inspection names the item
    with caplog.at_level(logging.WARNING, logger="replay_service.client"):
        for _ in range(20):
            info, batch = c.sample(32, 0.0)
            assert len(batch) == 32 and 3 not in info.key
            assert [t.reward for t in batch] == [float(k) for k in info.key]  # the others are intact
            assert np.all(info.weight > 0) and np.all(info.weight <= 1.0)
    warnings = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(warnings) == 1 and "item 3" in warnings[0].getMessage()  # logged once
    s = c.stats()["online"]
    assert s["decode_errors"] == 1 and s["size"] == 10 and s["priority_min"] == 1.0
    assert s["samples"] == 20 * 32  # replacements are not counted twice by the rate limiter
    assert c.quarantined("online") == [3]
    assert c.quarantined_bytes("online", 3) == garbage  # the stored bytes are kept for inspection
    from prometheus_client import CollectorRegistry

    from replay_service.server import ReplayCollector

    registry = CollectorRegistry()
    registry.register(ReplayCollector(c))  # what `relaxrl replay serve` exports
    assert registry.get_sample_value("relaxrl_replay_decode_errors_total", {"table": "online"}) == 1.0
    assert c.priorities("online")[1][3] == 0.0
    assert c.items("online", [2, 3, 4])[1] is None and c.items("online", [2])[0].reward == 2.0
    c.insert("online", transitions(range(10, 30)))  # FIFO laps the slot: the quarantined bytes stay
    assert c.quarantined_bytes("online", 3) == garbage


def test_a_live_item_without_payload_and_a_wrong_version_are_quarantined(redis_server):
    c = client_for(redis_server)
    c.insert("expert", transitions(range(20)))
    c.insert("online", transitions(range(6)))
    c._call("DEL", c.item_key("expert", 1))
    wrong = bytearray(encode(transitions([2])[0]))
    wrong[4] = 99  # codec version 99
    c._call("SET", c.item_key("online", 2), bytes(wrong))
    for _ in range(10):
        info, batch = c.sample(16, 0.5)
        assert (info.table == "expert").sum() == 8 and len(batch) == 16
        assert not ((info.table == "expert") & (info.key == 1)).any()
        assert not ((info.table == "online") & (info.key == 2)).any()
    assert c.quarantined("expert") == [1] and c.quarantined("online") == [2]
    assert c.quarantined_bytes("expert", 1) == b""
    assert [c.stats()[t]["decode_errors"] for t in ("expert", "online")] == [1, 1]


def test_sampling_fails_clearly_when_every_item_is_quarantined(redis_server):
    c = client_for(redis_server)
    c.insert("online", transitions(range(2)))
    for k in range(2):
        c._call("SET", c.item_key("online", k), b"RXRL garbage")
    with pytest.raises(ReplayError, match="online has no item with priority > 0"):
        c.sample(4, 0.0)
    assert c.quarantined("online") == [0, 1]
    with pytest.raises(RateLimiterTimeout, match="online has no item with priority > 0"):
        c.sample(4, 0.0, timeout=0.2)


def test_a_sampler_waits_for_reserved_items_and_never_sees_them_before_their_payloads(redis_server):
    c = client_for(redis_server)
    k = c.keys["online"]
    # a writer that reserved two slots and has not stored their payloads yet (steps 2-3 of an insert pending)
    granted, first = c._script("reserve", [k.meta, k.leaf, k.agg, ""], [2, k.item_prefix])
    assert (int(granted), int(first)) == (2, 0) and c.sizes()["online"] == 2
    with pytest.raises(RateLimiterTimeout, match="items still being written"):
        c.sample(4, 0.0, timeout=0.2)
    c.insert("online", transitions([7.0]))  # key 2 is published; 0 and 1 stay unsampleable
    info, batch = c.sample(64, 0.0)
    assert set(info.key.tolist()) == {2} and all(t.reward == 7.0 for t in batch)
    payloads = [c._call("GET", k.item(0))]
    assert payloads == [None] and c.items("online", [0, 1, 2])[:2] == [None, None]


def _insert_in_child(blob: bytes, q) -> None:
    client = pickle.loads(blob)
    q.put(client.insert("online", transitions([42.0])).tolist())


def test_client_pickles_to_its_address_and_works_in_another_process(redis_server):
    c = client_for(redis_server)
    c.sizes()  # connected here; the pickle must not carry the connection
    blob = pickle.dumps(c)
    assert len(blob) < 4096
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_insert_in_child, args=(blob, q))
    p.start()
    keys = q.get(timeout=120)
    p.join(60)
    assert p.exitcode == 0 and keys == [0]
    assert c.items("online", keys)[0].reward == 42.0


def test_unreachable_redis_is_one_clear_error_with_the_password_hidden():
    c = ReplayClient("redis://:s3cret-pw@127.0.0.1:1/0", ReplayConfig(connect_timeout=0.3))
    t0 = time.monotonic()
    with pytest.raises(ReplayConnectionError) as e:
        c.sizes()
    msg = str(e.value)
    assert "127.0.0.1:1" in msg and "***" in msg and "s3cret" not in msg
    assert "s3cret" not in repr(c)
    assert time.monotonic() - t0 < 30


def test_replay_serve_creates_tables_and_exports_metrics_read_from_redis(redis_server):
    import socket
    import subprocess
    import sys
    import urllib.request

    from replay_service.server import check_url_security

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ns = f"t{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-m", "relaxrl.cli", "replay", "serve", "--redis-url", redis_server.url,
                             "--set", f"replay.namespace={ns}", "--metrics-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        c = ReplayClient(redis_server.url, ReplayConfig(namespace=ns))
        text = ""
        for _ in range(300):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert 'relaxrl_replay_inserts_total{table="online"} 0.0' in text
        c.insert("online", transitions([1, 2, 3]), priorities=[1.0, 2.0, 4.0])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        assert 'relaxrl_replay_inserts_total{table="online"} 3.0' in text
        assert 'relaxrl_replay_priority_max{table="online"} 4.0' in text
        assert 'relaxrl_replay_rate_limiter_waits_total{op="sample",table="online"} 0.0' in text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    with pytest.raises(ReplayConfigError, match="without a password"):
        check_url_security("redis://10.0.0.5:6379/0")
    check_url_security("redis://:pw@10.0.0.5:6379/0")
    check_url_security("redis://localhost:6379/0")
