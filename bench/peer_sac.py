"""Peer baseline: RLlib's SAC on the fixed-size Gymnasium wrapper of one small system; prints one JSON object.

    python bench/peer_sac.py [--quick] [--env-steps N] [--checkpoint CKPT] [--n-atoms 5] [--seed 0]

What a user would pick instead of relaxrl: an off-the-shelf RL library (``ray[rllib]``, the
``bench`` extra) trained on ``actors.gym_env.FixedRelaxGymEnv`` — one fixed structure, flat
positions+forces observation, flat displacement action, the same RelaxEnv underneath (same
correction, reward, fmax and step limit). After ``--env-steps`` environment steps (default:
the checkpoint's ``t_total`` when ``--checkpoint`` is given, so both saw the same number of
steps, else 20000), SAC's deterministic policy relaxes the same structure: success (Fmax <
fmax within the env's max_steps) and force calls are printed, next to ASE's BFGS on the same
structure and, with ``--checkpoint``, the relaxrl policy through RLOptimizer (same fmax, same
step limit). Whatever the outcome, it is printed as measured. RLlib's training is not bit-for-bit
reproducible on CPU even with a seed, so repeat the run before drawing conclusions.

``--quick`` (< 60 s): 1000 env steps, learning from step 200 with one update per 8 env steps (the
full run: one update per env step, as SAC is usually run), one evaluation episode.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from actors.gym_env import FixedRelaxGymEnv, default_fixed_structure  # noqa: E402
from common.config import EnvConfig  # noqa: E402


def _make_env(env_ctx) -> FixedRelaxGymEnv:
    """RLlib's env creator: the fixed structure and env settings travel in the env config (plain values)."""
    from ase import Atoms

    atoms = Atoms(numbers=env_ctx["numbers"], positions=env_ctx["positions"], cell=env_ctx["cell"], pbc=env_ctx["pbc"])
    return FixedRelaxGymEnv(atoms, EnvConfig(**env_ctx["env"]))


def train_sac(atoms, env_cfg: EnvConfig, env_steps: int, learning_starts: int, seed: int, steps_per_update: int = 1):
    """Train RLlib SAC for ``env_steps`` environment steps, one gradient update per ``steps_per_update`` env steps.

    Returns (algorithm, steps sampled, train seconds).
    """
    import ray
    from ray.rllib.algorithms.sac import SACConfig
    from ray.tune.registry import register_env

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=False)
    register_env("relaxrl-fixed", _make_env)
    env_ctx = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
               "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(),
               "env": {k: getattr(env_cfg, k) for k in env_cfg.__dataclass_fields__}}
    config = (
        SACConfig()
        .environment("relaxrl-fixed", env_config=env_ctx)
        .framework("torch")
        .env_runners(num_env_runners=0, rollout_fragment_length=steps_per_update)
        .learners(num_learners=0)
        .training(num_steps_sampled_before_learning_starts=learning_starts, train_batch_size_per_learner=128,
                  gamma=0.95, replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 20000})
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=100)
        .debugging(seed=seed, log_level="ERROR")
    )
    algo = config.build_algo()
    t0 = time.perf_counter()
    sampled = 0
    while sampled < env_steps:
        result = algo.train()
        sampled = int(result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", sampled + 1))
    return algo, sampled, time.perf_counter() - t0


def sac_action_fn(algo, action_space):
    """Deterministic SAC action (tanh of the Gaussian mean, unsquashed to the Box) for a flat observation."""
    import torch
    from ray.rllib.core.columns import Columns
    from ray.rllib.utils.spaces.space_utils import unsquash_action

    module = algo.get_module()
    dist_cls = module.get_inference_action_dist_cls()

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: torch.as_tensor(obs, dtype=torch.float32)[None]})
            a = dist_cls.from_logits(out[Columns.ACTION_DIST_INPUTS]).to_deterministic().sample()[0].numpy()
        return np.asarray(unsquash_action(a, action_space), dtype=np.float64)

    return act


def run_gym_episodes(env: FixedRelaxGymEnv, act, episodes: int) -> dict:
    """Greedy episodes: success (converged before max_steps), steps, force calls (the env's count)."""
    results = []
    for ep in range(episodes):
        obs, info = env.reset(seed=ep)
        done, steps, last = False, 0, {"force_calls": 1, "fmax": info["fmax"]}
        while not done:
            obs, _, terminated, truncated, last = env.step(act(obs))
            steps += 1
            done = terminated or truncated
        results.append({"success": bool(terminated), "steps": steps, "force_calls": int(last["force_calls"]),
                        "final_fmax": float(last["fmax"])})
    return _aggregate(results)


def _aggregate(results: list[dict]) -> dict:
    return {
        "episodes": len(results),
        "success_rate": sum(r["success"] for r in results) / len(results),
        "force_calls_mean": float(np.mean([r["force_calls"] for r in results])),
        "steps_mean": float(np.mean([r["steps"] for r in results])),
        "final_fmax_mean": float(np.mean([r["final_fmax"] for r in results])),
    }


def run_ase(atoms, env_cfg: EnvConfig, opt_name: str, policy=None) -> dict:
    """ASE BFGS or RLOptimizer on the same structure, same fmax and step limit; calls counted at the calculator."""
    from ase.optimize import BFGS

    from actors.env import make_calculator
    from relaxrl.optimizer import CountingCalculator, RLOptimizer

    a = atoms.copy()
    a.calc = CountingCalculator(make_calculator(env_cfg.calculator, env_cfg.calculator_kwargs))
    opt = RLOptimizer(a, policy=policy, logfile=None) if opt_name == "rl" else BFGS(a, logfile=None)
    converged = bool(opt.run(fmax=env_cfg.fmax, steps=env_cfg.max_steps))
    return {"episodes": 1, "success_rate": float(converged), "force_calls_mean": float(a.calc.calls),
            "steps_mean": float(opt.nsteps), "final_fmax_mean": float(np.linalg.norm(a.get_forces(), axis=1).max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1000 env steps, 1 update per 8 steps, one evaluation episode (< 60 s)")
    p.add_argument("--env-steps", type=int, default=0, help="SAC training steps (default: the checkpoint's t_total, else 20000)")
    p.add_argument("--checkpoint", default=None, help="relaxrl checkpoint to compare on the same system")
    p.add_argument("--n-atoms", type=int, default=5, help="size of the fixed demo cluster (3..8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    warnings.filterwarnings("ignore")
    logging.getLogger("ray").setLevel(logging.ERROR)

    policy, ckpt_t_total = None, 0
    env_cfg = EnvConfig()
    if args.checkpoint:
        from learner.checkpoint import load_checkpoint
        from learner.policy import load_policy

        policy = load_policy(args.checkpoint)
        ckpt_t_total = int(load_checkpoint(args.checkpoint).get("counters", {}).get("t_total", 0))
        env_cfg = policy.config.env
    if args.env_steps:
        env_steps = args.env_steps
    elif args.quick:
        env_steps = 1000
    else:
        env_steps = ckpt_t_total or 20000
    learning_starts = 200 if args.quick else min(1500, env_steps // 4)
    steps_per_update = 8 if args.quick else 1

    atoms = default_fixed_structure(args.n_atoms, seed=args.seed)
    algo, sampled, train_s = train_sac(atoms, env_cfg, env_steps, learning_starts, args.seed, steps_per_update)
    env = FixedRelaxGymEnv(atoms, env_cfg)
    sac = run_gym_episodes(env, sac_action_fn(algo, env.action_space), 1)  # deterministic policy, fixed start: one episode
    sac.update(env_steps_trained=sampled, train_time_s=round(train_s, 2))
    algo.stop()
    import ray

    ray.shutdown()

    out = {
        "benchmark": "peer_sac",
        "system": {"name": atoms.info.get("name"), "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms)},
        "fmax_ev_per_a": env_cfg.fmax,
        "max_steps": env_cfg.max_steps,
        "env_steps_budget": env_steps,
        "env_steps_per_update": steps_per_update,
        "env_steps_source": ("--env-steps" if args.env_steps else "--quick" if args.quick
                             else "checkpoint t_total" if ckpt_t_total else "default"),
        "rllib_sac": sac,
        "bfgs": run_ase(atoms, env_cfg, "bfgs"),
    }
    if policy is not None:
        out["relaxrl"] = run_ase(atoms, env_cfg, "rl", policy=policy)
        out["relaxrl"]["checkpoint_t_total"] = ckpt_t_total
    else:
        out["relaxrl"] = None
        out["note"] = "no --checkpoint: relaxrl's policy not compared (pass a trained run directory)"
    out["wall_time_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
