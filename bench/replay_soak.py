"""Replay soak: N writer processes and one sampler-updater against one Redis, then a full audit.

Each writer inserts batches of transitions whose reward is a unique identity (writer, sequence)
into ``online`` (three batches in four) and ``expert``, and remembers every key the service
acknowledged. The sampler-updater samples mixed batches (expert fraction 0.25) and sets new
priorities for as long as the writers run. Afterwards every live item is read back and decoded:

    acknowledged    items whose insert returned keys
    counted         items the tables counted (their insert counters; FIFO-evicted items included)
    lost            acknowledged items that are live but missing or hold another item's bytes,
                    plus acknowledged items the counters do not account for
    duplicates      keys acknowledged twice, plus identities stored twice
    decode_errors   stored payloads that fail to decode (while sampling and in the audit)
    unacknowledged  keys counted that no writer was told about (a writer killed mid-insert)

with throughput and p50/p99 latency of insert (one call of ``--batch`` items), sample and
priority update. ``--kill-at S`` SIGKILLs the embedded redis-server S seconds in and restarts
it on the same data directory (writers retry meanwhile), which measures what a crash of
Redis loses with ``--appendfsync everysec`` vs ``always``. Prints one JSON object.

    python bench/replay_soak.py [--quick] [--writers 4] [--seconds 30] [--appendfsync always] [--kill-at 5]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import ReplayConfig  # noqa: E402
from common.names import TABLE_NAMES  # noqa: E402
from common.observation import Observation  # noqa: E402
from common.replay_tables import MinSize, default_tables  # noqa: E402
from common.transition import Transition  # noqa: E402
from replay_service.client import ReplayClient  # noqa: E402
from replay_service.codec import CodecError  # noqa: E402
from replay_service.server import start_embedded  # noqa: E402

EXPERT, ONLINE = TABLE_NAMES  # the default pair: writers fill both, the sampler draws 0.25 of each batch from EXPERT

ID_STRIDE = 10**9  # identity = writer * ID_STRIDE + sequence, exact in float64


def make_batch(n_atoms: int, idents: np.ndarray, rng: np.random.Generator) -> list[Transition]:
    """Well-formed transitions of an n-atom periodic structure; reward = identity."""
    numbers = np.full(n_atoms, 29)
    cell = np.eye(3) * 8.0
    out = []
    for ident in idents:
        pos = rng.uniform(0, 8, size=(n_atoms, 3))  # Å
        move = rng.normal(scale=0.05, size=(n_atoms, 3))  # Å
        o = Observation(pos, numbers, cell, np.ones(3, bool), rng.normal(size=(n_atoms, 3)), -3.0)
        o2 = Observation(pos + move, numbers, cell, np.ones(3, bool), rng.normal(size=(n_atoms, 3)), -3.1)
        out.append(Transition(o, move, move, float(ident), False, False, o2, 0.0))
    return out


def writer(url: str, cfg: ReplayConfig, wid: int, stop_at: float, batch: int, n_atoms: int, q) -> None:
    """Insert until ``stop_at`` (wall clock); report (wid, table codes, keys, identities, latencies, error)."""
    rng = np.random.default_rng(wid)
    client = ReplayClient(url, cfg)
    tables, keys, idents, lat = [], [], [], []
    seq, error = 0, ""
    pool = make_batch(n_atoms, np.zeros(max(64, batch)), rng)  # distinct objects: a batch never holds one twice
    try:
        while time.time() < stop_at:
            ident = wid * ID_STRIDE + np.arange(seq, seq + batch)
            items = [pool[(seq + i) % len(pool)] for i in range(batch)]
            for t, r in zip(items, ident):
                t.reward = float(r)
            table = EXPERT if (seq // batch) % 4 == 3 else ONLINE
            t0 = time.perf_counter()
            got = client.insert(table, items, timeout=None)
            lat.append(time.perf_counter() - t0)
            tables.append(np.full(batch, table == EXPERT))
            keys.append(got)
            idents.append(ident)
            seq += batch
    except Exception as e:  # reported: the audit then says what this writer had acknowledged
        error = f"{type(e).__name__}: {e}"
    def cat(xs, dt):
        return np.concatenate(xs) if xs else np.zeros(0, dt)

    q.put((wid, cat(tables, bool), cat(keys, np.int64), cat(idents, np.int64), np.asarray(lat), error))


def percentile_ms(x: list[float] | np.ndarray, q: float) -> float:
    return round(float(np.percentile(x, q)) * 1e3, 3) if len(x) else 0.0


def audit(client: ReplayClient, acked: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, int]:
    """Compare what writers were told with what the tables hold; decode every live item."""
    out = {"acknowledged": 0, "counted": 0, "lost": 0, "duplicates": 0, "decode_errors": 0, "unacknowledged": 0,
           "evicted": 0}
    stats = client.stats()
    for table, (keys, idents) in acked.items():
        cursor, size = int(stats[table]["inserts"]), int(stats[table]["size"])
        out["acknowledged"] += len(keys)
        out["counted"] += cursor
        out["evicted"] += cursor - size
        uniq, counts = np.unique(keys, return_counts=True)
        out["duplicates"] += int((counts > 1).sum())
        out["lost"] += int((uniq >= cursor).sum())  # acknowledged beyond what the table counted
        out["unacknowledged"] += int(cursor - np.count_nonzero(uniq < cursor))
        live = keys >= cursor - size
        lk, li = keys[live], idents[live]
        stored: list[float | None] = []
        for start in range(0, len(lk), 500):
            chunk = lk[start:start + 500]
            try:
                stored += [None if t is None else t.reward for t in client.items(table, chunk)]
            except CodecError:  # find the bad ones one by one
                for k in chunk:
                    try:
                        t = client.items(table, [int(k)])[0]
                        stored.append(None if t is None else t.reward)
                    except CodecError:
                        out["decode_errors"] += 1
                        stored.append(None)
        got = np.array([np.nan if s is None else s for s in stored])
        out["lost"] += int(np.count_nonzero(got != li.astype(np.float64)))
        values = got[~np.isnan(got)]
        out["duplicates"] += len(values) - len(np.unique(values))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the writers write")
    ap.add_argument("--batch", type=int, default=16, help="transitions per insert call (an actor's insert_batch)")
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--atoms", type=int, default=8)
    ap.add_argument("--capacity", type=int, default=50_000, help="max_size of each table (FIFO beyond)")
    ap.add_argument("--appendfsync", default="everysec", choices=["everysec", "always"])
    ap.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL and restart the embedded Redis after S s (0 = no)")
    ap.add_argument("--redis-url", default="", help="an existing Redis instead of an embedded one (no --kill-at)")
    ap.add_argument("--quick", action="store_true", help="12 s of writing, 20k capacity (finishes in < 40 s)")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.capacity = min(args.seconds, 12.0), min(args.capacity, 20_000)
    if args.kill_at and args.redis_url:
        ap.error("--kill-at needs the embedded Redis")

    tmp = Path(tempfile.mkdtemp(prefix="replay-soak-"))
    srv = None if args.redis_url else start_embedded(tmp / "redis", appendfsync=args.appendfsync)
    url = args.redis_url or srv.url
    cfg = ReplayConfig(tables=default_tables(args.capacity, args.capacity, online_limiter=MinSize(args.sample_batch)),
                       namespace=f"soak{os.getpid()}", connect_timeout=120.0)
    client = ReplayClient(url, cfg, seed=0)
    client.create_tables()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    t_start = time.time()
    stop_at = t_start + args.seconds
    procs = [ctx.Process(target=writer, args=(url, cfg, w, stop_at, args.batch, args.atoms, q), daemon=True)
             for w in range(args.writers)]
    for p in procs:
        p.start()
    rng = np.random.default_rng(1)
    sample_lat, update_lat, sampled, decode_errors = [], [], 0, 0
    killed, restart_s = False, 0.0
    try:
        while time.time() < stop_at:
            if args.kill_at and not killed and time.time() - t_start >= args.kill_at:
                t0 = time.perf_counter()
                srv.kill()  # SIGKILL: what Redis had not written to the AOF is gone
                srv = start_embedded(tmp / "redis", appendfsync=args.appendfsync)
                restart_s, killed = time.perf_counter() - t0, True
            t0 = time.perf_counter()
            try:
                info, batch = client.sample(args.sample_batch, 0.25, timeout=1.0)
            except CodecError:
                decode_errors += 1
                continue
            except TimeoutError:  # not enough items yet
                continue
            t1 = time.perf_counter()
            for table in TABLE_NAMES:
                sel = info.table == table
                if sel.any():
                    client.update_priorities(table, info.key[sel], rng.uniform(0.1, 2.0, int(sel.sum())))
            update_lat.append(time.perf_counter() - t1)
            sample_lat.append(t1 - t0)
            sampled += len(batch)
        results = [q.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(60)
        elapsed = time.time() - t_start
        acked = {}
        for code, table in ((True, EXPERT), (False, ONLINE)):
            acked[table] = (np.concatenate([r[2][r[1] == code] for r in results]),
                            np.concatenate([r[3][r[1] == code] for r in results]))
        report = audit(client, acked)
        report["decode_errors"] += decode_errors
        lat = np.concatenate([r[4] for r in results])
        report.update({
            "writers": args.writers, "seconds": round(elapsed, 2), "batch": args.batch, "atoms": args.atoms,
            "capacity": args.capacity, "appendfsync": args.appendfsync, "killed": killed,
            "restart_s": round(restart_s, 3),
            "writer_errors": [r[5] for r in results if r[5]],
            "insert_items_per_s": round(report["acknowledged"] / args.seconds, 1),
            "insert_p50_ms": percentile_ms(lat, 50), "insert_p99_ms": percentile_ms(lat, 99),
            "sample_items_per_s": round(sampled / args.seconds, 1), "sample_batches": len(sample_lat),
            "sample_p50_ms": percentile_ms(sample_lat, 50), "sample_p99_ms": percentile_ms(sample_lat, 99),
            "update_p99_ms": percentile_ms(update_lat, 99),
            "loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        })
        print(json.dumps(report))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
