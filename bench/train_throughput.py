"""Throughput of the whole training system, with its parts alone as the baseline, in one run.

Prints one JSON object:
  system: env steps/s across actors, learner updates/s, share of learner time spent waiting
          on replay (goal < 10 %), while actors and learner run together on local Ray;
  baseline: the same learner updating alone from the same replay tables (actors stopped),
            one in-process environment driven by the BFGS expert (no Ray, no replay), and one
            online ActorLoop in-process (policy forward + envs, no Ray, no replay);
  ratios: system / baseline for updates/s and env steps/s.

    python bench/train_throughput.py [--quick] [--config configs/demo.toml] [--seconds 60] [--parts-only]

``--parts-only`` measures the two in-process baselines alone (no Ray, no replay, no learner): what one
environment and one actor give with the config's calculator, e.g. CHGNet on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (under a minute)")
    ap.add_argument("--config", default="configs/demo.toml")
    ap.add_argument("--seconds", type=float, default=90.0, help="time the system runs together")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--parts-only", action="store_true", help="only one env and one actor in-process (no Ray, no learner)")
    args = ap.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    if args.parts_only:
        parts_only(args, seconds)
        return

    import ray
    import torch

    from common.config import load_config
    from relaxrl.launcher import Run

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(cfg, Path(tmp), resume=False, address=None, redis_url=None)
        try:
            lr = run.learner
            # wait until the replay can be sampled, then measure a steady window
            lr.step()
            c = lr.counters
            u0, w0, b0 = c.updates, c.sample_wait_s, c.update_s
            t_env0 = run.hub.current_t_total()
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                lr.step()
            dt = time.monotonic() - t0
            t_env1 = run.hub.current_t_total()
            wait, busy = c.sample_wait_s - w0, (c.sample_wait_s - w0) + (c.update_s - b0)
            system = {"seconds": round(dt, 2), "env_steps_per_s": (t_env1 - t_env0) / dt,
                      "updates_per_s": (c.updates - u0) / dt,
                      "sample_wait_share": wait / busy if busy else 0.0, "updates": c.updates - u0,
                      "actors": cfg.actors.num_online + cfg.actors.num_expert, "envs_per_actor": cfg.actors.envs_per_actor,
                      "batch_size": cfg.learner.batch_size}
            run.hub.stop()
            ray.wait(run.actor_runs, num_returns=len(run.actor_runs), timeout=30)
            u1, t1 = c.updates, time.monotonic()
            while time.monotonic() - t1 < seconds / 2:
                lr.step()
            learner_alone = (c.updates - u1) / (time.monotonic() - t1)
        finally:
            run.close()
        env_alone = one_env_steps_per_s(cfg, run.train_structures, seconds / 2)

        # one online ActorLoop in this process (policy forward + env, no Ray, transitions kept in a list)
        from actors.coordinator import Coordinator
        from actors.curriculum import Curriculum
        from actors.loop import ActorLoop

        class ListWriter:
            def __init__(self):
                self.n = 0

            def insert(self, table, transitions, priorities=None, **_):
                self.n += len(transitions)

        actor = ActorLoop("online", cfg, ListWriter(), Coordinator(Curriculum(run.train_structures, cfg.curriculum)))
        actor.policy.load_weights(lr.actor_weights(), 1)
        n0, t3 = actor.steps, time.monotonic()
        while time.monotonic() - t3 < seconds / 2:
            actor.step()
        actor_alone = (actor.steps - n0) / (time.monotonic() - t3)
    out = {
        "config": args.config, "quick": args.quick, "cpus": os.cpu_count(), "load_avg_start": load_start,
        "load_avg_end": os.getloadavg()[0], "device": str(lr.device),
        "system": system,
        "baseline": {"learner_alone_updates_per_s": learner_alone, "one_env_in_process_steps_per_s": env_alone,
                     "one_online_actor_in_process_steps_per_s": actor_alone},
        "ratios": {"updates_system_vs_alone": system["updates_per_s"] / learner_alone if learner_alone else None,
                   "env_steps_system_vs_one_env": system["env_steps_per_s"] / env_alone if env_alone else None,
                   "env_steps_system_vs_one_actor": system["env_steps_per_s"] / actor_alone if actor_alone else None},
        "goal": {"sample_wait_share_below": 0.10, "met": system["sample_wait_share"] < 0.10},
    }
    print(json.dumps(out, indent=2, default=float))


def one_env_steps_per_s(cfg, structures, seconds: float) -> float:
    """Steps/s of one in-process RelaxEnv driven by the config's BFGS teacher (no Ray, no replay)."""
    from actors.env import RelaxEnv
    from actors.expert import BFGSExpert

    env = RelaxEnv(cfg.env)
    structures = [a for a in structures if len(a) <= cfg.curriculum.stages[0]]
    steps, t0, k = 0, time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        obs, expert = env.reset(structures[k % len(structures)]), BFGSExpert.from_config(cfg.expert, env, cfg.env.max_step)
        k += 1
        while True:
            res = env.step(expert.action(obs))
            steps += 1
            obs = res.obs
            if res.terminated or res.truncated:
                break
    return steps / (time.monotonic() - t0)


def parts_only(args, seconds: float) -> None:
    """One env and one online actor in-process, the config's calculator and untrained policy; prints one JSON."""
    import torch

    from actors.coordinator import Coordinator
    from actors.curriculum import Curriculum, load_structures
    from actors.loop import ActorLoop
    from common.config import load_config

    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    train, _ = load_structures(cfg.curriculum.source, cfg.curriculum, cfg.run.seed, calculator=cfg.env.calculator,
                               calculator_kwargs=cfg.env.calculator_kwargs, relax_cell=cfg.env.relax_cell,
                               min_distance_factor=cfg.env.min_distance_factor)
    env_alone = one_env_steps_per_s(cfg, train, seconds)

    class ListWriter:
        def insert(self, table, transitions, priorities=None):
            pass

    actor = ActorLoop("online", cfg, ListWriter(), Coordinator(Curriculum(train, cfg.curriculum)))
    actor.step()  # the first step resets every environment (an initial force call each)
    n0, t0 = actor.steps, time.monotonic()
    while time.monotonic() - t0 < seconds:
        actor.step()
    actor_alone = (actor.steps - n0) / (time.monotonic() - t0)
    print(json.dumps({"config": args.config, "overrides": args.overrides, "calculator": cfg.env.calculator,
                      "relax_cell": cfg.env.relax_cell, "cpus": os.cpu_count(), "torch_threads": 1,
                      "load_avg_start": load_start, "load_avg_end": os.getloadavg()[0], "seconds": seconds,
                      "one_env_in_process_steps_per_s": env_alone,
                      "one_online_actor_in_process_steps_per_s": actor_alone,
                      "envs_per_actor": cfg.actors.envs_per_actor}, indent=2))


if __name__ == "__main__":
    main()
