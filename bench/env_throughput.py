"""Environment throughput: the BFGS expert driving RelaxEnv vs a bare ase.optimize.BFGS loop.

Both relax the same generated EMT structures (demo clusters, plus bulk and slabs unless
--quick) to the same fmax and step limit, in the same process, alternating rounds; the
best round of each counts. Prints one JSON object: steps/s of each, their ratio
(goal ≥ 0.8) and whether both took the same number of steps.

    python bench/env_throughput.py [--quick] [--rounds N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# One BLAS thread, as in a Ray actor: multithreaded eigh on tiny matrices only adds contention.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ase.calculators.emt import EMT  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

from actors.env import RelaxEnv  # noqa: E402
from actors.expert import BFGSExpert  # noqa: E402
from actors.generate import generate_demo  # noqa: E402
from common.config import CurriculumConfig, EnvConfig  # noqa: E402

FMAX = 0.05
MAX_STEPS = 200


def bare_bfgs(structures) -> tuple[int, float]:
    """(optimizer steps, seconds) for ase.optimize.BFGS on copies of the structures."""
    steps = 0
    t0 = time.perf_counter()
    for atoms in structures:
        a = atoms.copy()
        a.calc = EMT()
        opt = BFGS(a, logfile=None)
        opt.run(fmax=FMAX, steps=MAX_STEPS)
        steps += opt.nsteps
    return steps, time.perf_counter() - t0


def env_expert(structures) -> tuple[int, float]:
    """(env steps, seconds) for BFGSExpert actions through RelaxEnv."""
    env = RelaxEnv(EnvConfig(fmax=FMAX, max_steps=MAX_STEPS))
    expert = BFGSExpert(maxstep=0.2)
    steps = 0
    t0 = time.perf_counter()
    for atoms in structures:
        obs = env.reset(atoms)
        expert.reset()
        if obs.fmax < FMAX:
            continue
        while True:
            step = env.step(expert.action(obs))
            obs = step.obs
            if step.terminated or step.truncated:
                break
        steps += env.steps
    return steps, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small clusters only, 3 rounds (< 30 s)")
    parser.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 3 quick, 5 full)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)

    cfg = CurriculumConfig(n_structures=24 if args.quick else 64)
    structures = generate_demo(cfg, seed=0)
    if args.quick:
        structures = [a for a in structures if len(a) <= 16]

    best_env = best_bfgs = float("inf")
    steps_env = steps_bfgs = 0
    for _ in range(rounds):
        steps_bfgs, t = bare_bfgs(structures)
        best_bfgs = min(best_bfgs, t)
        steps_env, t = env_expert(structures)
        best_env = min(best_env, t)

    env_rate = steps_env / best_env
    bfgs_rate = steps_bfgs / best_bfgs
    print(json.dumps({
        "bench": "env_throughput",
        "quick": args.quick,
        "structures": len(structures),
        "atoms_min_max": [min(map(len, structures)), max(map(len, structures))],
        "rounds": rounds,
        "env_expert_steps": steps_env,
        "bfgs_steps": steps_bfgs,
        "same_steps": steps_env == steps_bfgs,
        "env_expert_steps_per_s": round(env_rate, 1),
        "bfgs_steps_per_s": round(bfgs_rate, 1),
        "ratio": round(env_rate / bfgs_rate, 3),
        "goal_ratio": 0.8,
        "cpu": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }))


if __name__ == "__main__":
    main()
