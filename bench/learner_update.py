"""Learner updates per second at a preset's scale, this tree against a baseline commit in one run; one JSON object.

    .venv/bin/python bench/learner_update.py [--config configs/quality.toml] [--baseline main] [--updates 16]
                                             [--rounds 3] [--profile] [--edge-chunk N] [--quick]

What one update is: ``Learner.step()`` of the tree under test, whole (replay sample and decode,
``batch_graphs`` of s and s', the TD3 update with the preset's head, curvature loss and optimizers,
priorities), on real transitions:

  data      an expert and an online ``ActorLoop`` of the preset (its teacher, curvature probes, n-step
            windows, neighbour lists attached by the actors) run in this process on the preset's training
            structures, every curriculum stage open (so cells up to the last stage's atom count), with
            short episodes and many environments so that the batch mixes many structures. Their encoded
            transitions are cached in a file (``--data``); both trees decode the same bytes.
  batches   a seeded list of batches of ``learner.batch_size`` drawn with the preset's table shares
            (uniform within a table, importance weights drawn once): every tree sees the same batches
            in the same order from the same initial weights (``run.seed``).
  timing    each tree runs in its own process (``--worker``): 2 warm-up updates, then ``--updates`` timed
            ones; the trees alternate for ``--rounds`` rounds so that load on a shared machine hits both.
            Reported: the median seconds per update over all timed updates of a tree, updates/s, and the
            speed-up. The baseline tree is ``git archive`` of ``--baseline`` in a temporary directory.
  agreement the logged scalars (losses, Q) of every update of both trees from the same start: the largest
            relative difference (an exact speed-up keeps them equal up to rounding).

``--profile`` adds, for this tree, the share of an update in each phase and torch.profiler's top
operators (self CPU time). ``--edge-chunk N`` sets ``learner.messages.EDGE_CHUNK`` in this tree's
workers (with ``--baseline HEAD``: one chunk size against the committed one). ``--quick`` (``make
bench``): 64 stored transitions per table, 2 timed updates, 1 round.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 2


# ----------------------------------------------------------------------------- data (this tree's actors)

def _config(path: str, overrides: list[str]):
    from common.config import load_config
    return load_config(path, overrides)


class _ListWriter:
    """Keeps every insert's encoded payloads per table (the adder's writer)."""

    def __init__(self) -> None:
        self.payloads: dict[str, list[bytes]] = {}

    def insert(self, table, transitions, priorities=None, **_):
        from replay_service.codec import encode_many
        self.payloads.setdefault(table, []).extend(encode_many(transitions))
        return len(transitions)


def make_data(config_path: str, overrides: list[str], per_table: dict[str, int], seed: int) -> dict[str, list[bytes]]:
    """Encoded transitions per table from in-process actors of the preset (module docstring)."""
    import torch

    from actors.coordinator import Coordinator
    from actors.curriculum import Curriculum, load_structures
    from actors.loop import ActorLoop

    cfg = _config(config_path, overrides)
    stages = cfg.curriculum.stages
    cfg = dataclasses.replace(
        cfg, env=dataclasses.replace(cfg.env, max_steps=16),  # short episodes: many structures
        actors=dataclasses.replace(cfg.actors, envs_per_actor=16),
        curriculum=dataclasses.replace(cfg.curriculum, stages=(stages[-1],)))  # every stage open
    torch.manual_seed(seed)
    train, _ = load_structures(cfg.curriculum.source, cfg.curriculum, cfg.run.seed)
    hub = Coordinator(Curriculum(train, cfg.curriculum), seed=seed)
    writer = _ListWriter()
    loops = [ActorLoop("expert", cfg, writer, hub, actor_id=0, seed=seed),
             ActorLoop("online", cfg, writer, hub, actor_id=1, seed=seed)]
    while any(len(writer.payloads.get(t, [])) < n for t, n in per_table.items()):
        for loop in loops:
            loop.step()
            hub.t_total += loop.config.actors.envs_per_actor
    return {t: writer.payloads[t] for t in per_table}


def save_data(path: Path, data: dict[str, list[bytes]]) -> None:
    arrays = {f"{t}/{i}": np.frombuffer(p, dtype=np.uint8) for t, ps in data.items() for i, p in enumerate(ps)}
    np.savez(path, **arrays)


def load_data(path: Path) -> dict[str, list[bytes]]:
    data: dict[str, list[bytes]] = {}
    with np.load(path) as z:
        names = sorted(z.files, key=lambda k: (k.split("/")[0], int(k.split("/")[1])))
        for k in names:
            data.setdefault(k.split("/")[0], []).append(z[k].tobytes())
    return data


# ----------------------------------------------------------------------------- the worker (any tree)

class FixedBatches:
    """A sampler over stored payloads: the ``k``-th call returns the ``k``-th pre-drawn batch, decoded anew."""

    def __init__(self, data: dict[str, list[bytes]], batches: list[dict]) -> None:
        self.data, self.batches, self.calls = data, batches, 0

    def sample(self, batch_size, shares=None, beta=0.4, timeout=None):
        from replay_service.client import SampleInfo
        from replay_service.codec import decode_many
        b = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        tables, keys = np.asarray(b["table"]), np.asarray(b["key"], dtype=np.int64)
        items = decode_many([self.data[t][k] for t, k in zip(tables, keys)])
        n = len(keys)
        info = SampleInfo(tables, keys, np.full(n, 1.0 / n), np.full(n, n, dtype=np.int64),
                          np.asarray(b["weight"], dtype=np.float64))
        return info, items

    def update_priorities(self, table, keys, priorities):
        return len(keys)

    def stats(self):
        return {}


def draw_batches(data: dict[str, list[bytes]], shares: dict[str, float], batch_size: int, n: int, seed: int) -> list[dict]:
    from common.replay_tables import apportion
    rng = np.random.default_rng(seed)
    names = list(shares)
    out = []
    for _ in range(n):
        counts = apportion(batch_size, [shares[t] for t in names])
        table = [t for t, c in zip(names, counts) for _ in range(c)]
        key = [int(rng.integers(len(data[t]))) for t, c in zip(names, counts) for _ in range(c)]
        out.append({"table": table, "key": key, "weight": rng.uniform(0.5, 1.0, batch_size).round(6).tolist()})
    return out


def worker(args) -> dict:
    """Time ``Learner.step`` of the tree at ``args.root`` (this process imports that tree)."""
    sys.path.insert(0, str(Path(args.root).resolve()))
    import torch

    from learner.learner import Learner
    torch.set_num_threads(args.threads)
    if args.edge_chunk:
        from learner import messages
        messages.EDGE_CHUNK = args.edge_chunk
    cfg = _config(args.config, args.set)
    data = load_data(Path(args.data))
    batches = json.loads(Path(args.batches).read_text())
    sampler = FixedBatches(data, batches)
    with tempfile.TemporaryDirectory() as run_dir:
        learner = Learner(cfg, sampler, run_dir)
        logs, times, cpu = [], [], []
        for k in range(WARMUP + args.updates):
            t0, c0 = time.perf_counter(), time.process_time()
            row = learner.step()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            logs.append({key: float(v) for key, v in row.items()})
            if k >= WARMUP:
                times.append(dt)
                cpu.append(dc)
        out = {"root": str(args.root), "learner_module": sys.modules["learner.learner"].__file__, "times_s": times,
               "cpu_s": cpu, "logs": logs,
               "sample_decode_s": learner.counters.sample_wait_s, "update_s": learner.counters.update_s}
        if args.profile:
            out["profile"] = profile(learner, args.profile_updates)
    return out


def profile(learner, updates: int) -> dict:
    """CPU seconds per update in each phase over ``updates`` more updates (inclusive: a phase's time includes the
    phases it calls, e.g. ``actor.forward_with_hessian`` its ``actor.model_hessian``; ``backward`` is every
    ``Tensor.backward``), then torch.profiler's top operators (self CPU time) over 2 updates."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from learner import learner as learner_module
    from learner import td3 as td3_module

    phases: dict[str, float] = {}
    undo = []

    def patch(obj, attr: str, name: str) -> None:
        if not hasattr(obj, attr):
            return
        fn = getattr(obj, attr)

        def wrapper(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                phases[name] = phases.get(name, 0.0) + time.process_time() - t0
        setattr(obj, attr, wrapper)
        undo.append((obj, attr, fn))

    patch(learner.sampler, "sample", "sample_decode")
    patch(learner, "_to_batch", "batch_graphs_and_targets")
    for net, name in ((learner.actor_target, "actor_target"), (learner.critic_target, "critic_target"),
                      (learner.critic, "critic"), (learner.actor, "actor")):
        for attr in ("forward", "q1", "forward_with_hessian", "model_hessian", "move"):
            patch(net, attr, f"{name}.{attr}")
    patch(learner.actor_opt, "step", "adam_actor")
    patch(learner.critic_opt, "step", "adam_critic")
    patch(learner_module, "corrected_moves", "corrected_moves")
    patch(td3_module, "polyak_update", "polyak")
    patch(td3_module, "curvature_loss", "curvature_loss")
    patch(torch.Tensor, "backward", "backward")
    t0 = time.process_time()
    for _ in range(updates):
        learner.step()
    total = time.process_time() - t0
    for obj, attr, fn in reversed(undo):
        setattr(obj, attr, fn)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            learner.step()
    table = prof.key_averages()
    top = sorted(table, key=lambda e: e.self_cpu_time_total, reverse=True)[:20]
    prof_total = sum(e.self_cpu_time_total for e in table)
    return {"updates": updates, "cpu_s_per_update": round(total / updates, 4),
            "phase_cpu_s_per_update": {k: round(v / updates, 4) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
            "top_ops_self_cpu_share": {e.key: round(e.self_cpu_time_total / prof_total, 3) for e in top}}


# ----------------------------------------------------------------------------- the driver

def _baseline_tree(rev: str, dest: Path) -> str:
    commit = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    tar_path = dest / "tree.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest / "tree", filter="data")
    return commit


def _run_worker(root: Path, args, data: Path, batches: Path, profile: bool, edge_chunk: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(root), "--data", str(data),
           "--batches", str(batches), "--config", args.config, "--updates", str(args.updates),
           "--threads", str(args.threads)] + [f"--set={s}" for s in args.set]
    if profile:
        cmd += ["--profile", "--profile-updates", str(args.profile_updates)]
    if edge_chunk:
        cmd += ["--edge-chunk", str(edge_chunk)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if res.returncode != 0:
        raise SystemExit(f"worker for {root} failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _agreement(a: list[dict], b: list[dict]) -> dict:
    worst, where = 0.0, None
    for k, (ra, rb) in enumerate(zip(a, b)):
        for key in sorted(set(ra) & set(rb)):
            x, y = ra[key], rb[key]
            d = abs(x - y) / max(abs(x), abs(y), 1e-8)
            if d > worst:
                worst, where = d, f"update {k + 1} {key}: {x:.8g} vs {y:.8g}"
    return {"max_relative_difference": worst, "where": where, "updates_compared": min(len(a), len(b))}


def _batch_stats(data: dict[str, list[bytes]], batches: list[dict]) -> dict:
    from replay_service.codec import decode_many
    atoms, edges, probes, probe_items, rows = [], [], 0, 0, 0
    for b in batches:
        items = decode_many([data[t][k] for t, k in zip(b["table"], b["key"])])
        atoms.append(sum(t.obs.n_atoms for t in items))
        edges.append(sum(t.obs.edge_index.shape[1] for t in items))
        rows += len(items)
        probe_items += sum(t.probe_atoms is not None for t in items)
        probes += sum(len(t.probe_atoms) for t in items if t.probe_atoms is not None)
    sizes = [t.obs.n_atoms for ps in data.values() for t in decode_many(ps)]
    return {"atoms_per_batch_mean": round(float(np.mean(atoms)), 1), "edges_per_batch_mean": round(float(np.mean(edges)), 1),
            "items_with_probes_share": round(probe_items / rows, 3), "probed_atoms_per_batch": round(probes / len(batches), 1),
            "stored_items": {t: len(ps) for t, ps in data.items()}, "largest_cell_atoms": max(sizes),
            "stored_atoms_mean": round(float(np.mean(sizes)), 1)}


def main(argv: list[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quality.toml")
    ap.add_argument("--set", action="append", default=[], help="a config override, as for relaxrl train")
    ap.add_argument("--baseline", default=None,
                    help="the commit to compare against (git archive of it); default: the parent of the commit that added "
                         "learner/messages.py (the update before it was made cheaper)")
    ap.add_argument("--updates", type=int, default=16, help="timed updates per tree and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads; default: what relaxrl train gives the learner (run.learner_threads, else CPUs − 1)")
    ap.add_argument("--data", default=None, help="cache of the actors' transitions (made when missing)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="phases and top operators of this tree's update")
    ap.add_argument("--profile-updates", type=int, default=8)
    ap.add_argument("--edge-chunk", type=int, default=None, help="learner.messages.EDGE_CHUNK in this tree's workers")
    ap.add_argument("--quick", action="store_true", help="64 transitions per table, 2 timed updates, 1 round")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--batches", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return None
    if args.quick:
        args.updates, args.rounds, args.profile_updates = 2, 1, 1
    sys.path.insert(0, str(ROOT))
    cfg = _config(args.config, args.set)
    if args.threads is None:
        args.threads = cfg.run.learner_threads or max(1, (os.cpu_count() or 2) - 1)
    if args.baseline is None:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "learner/messages.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
        args.baseline = f"{added[-1]}^" if added else "HEAD"
    tables = [t.name for t in cfg.replay.tables]
    per_table = {t: 64 if args.quick else 512 for t in tables}
    stem = f"relaxrl-learner-update-{Path(args.config).stem}-s{args.seed}{'-quick' if args.quick else ''}.npz"
    data_path = Path(args.data or Path(tempfile.gettempdir()) / stem)
    t_start = time.perf_counter()
    if not data_path.exists():
        t0 = time.perf_counter()
        save_data(data_path, make_data(args.config, args.set, per_table, args.seed))
        print(f"transitions made in {time.perf_counter() - t0:.0f} s: {data_path}", file=sys.stderr)
    data = load_data(data_path)
    from common.replay_tables import batch_shares
    shares = batch_shares(cfg.replay.tables, cfg.learner.expert_fraction_start)
    n_batches = WARMUP + args.updates + (args.profile_updates + 2 if args.profile else 0)
    batches = draw_batches(data, shares, cfg.learner.batch_size, n_batches, args.seed)
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        batches_path = Path(tmp) / "batches.json"
        batches_path.write_text(json.dumps(batches))
        commit = _baseline_tree(args.baseline, Path(tmp))
        roots = {"baseline": Path(tmp) / "tree", "this": ROOT}
        runs: dict[str, list[dict]] = {"baseline": [], "this": []}
        for r in range(args.rounds):
            for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                runs[name].append(_run_worker(roots[name], args, data_path, batches_path, False,
                                              args.edge_chunk if name == "this" else None))
        prof = (_run_worker(ROOT, args, data_path, batches_path, True, args.edge_chunk)["profile"] if args.profile
                else None)
    result: dict = {"bench": "learner_update", "config": args.config, "overrides": args.set, "quick": args.quick,
                    "edge_chunk_this": args.edge_chunk,
                    "batch_size": cfg.learner.batch_size, "torch_threads": args.threads,
                    "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_1m_at_start": round(load_start, 2),
                    "baseline": {"rev": args.baseline, "commit": commit},
                    "this": {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                                      text=True).stdout.strip(),
                             "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                                          cwd=ROOT, capture_output=True, text=True).stdout.strip())},
                    "batches": _batch_stats(data, batches[:WARMUP + args.updates])}
    for name, rs in runs.items():
        med = statistics.median([t for r in rs for t in r["times_s"]])
        cpu = statistics.median([t for r in rs for t in r["cpu_s"]])
        result[name].update({"s_per_update_median": round(med, 4), "updates_per_s": round(1.0 / med, 3),
                             "cpu_s_per_update_median": round(cpu, 4),
                             "s_per_update_by_round": [round(statistics.median(r["times_s"]), 4) for r in rs]})
    # wall time is what a run gets; CPU time of the (single-threaded) learner is the steadier measure when other work
    # shares the cores
    result["speedup"] = round(result["baseline"]["s_per_update_median"] / result["this"]["s_per_update_median"], 3)
    result["speedup_cpu_time"] = round(result["baseline"]["cpu_s_per_update_median"]
                                       / result["this"]["cpu_s_per_update_median"], 3)
    result["agreement"] = _agreement(runs["baseline"][0]["logs"], runs["this"][0]["logs"])
    if prof is not None:
        result["profile_this"] = prof
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
