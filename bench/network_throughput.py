"""Throughput of the e3nn actor/critic and the cost of a TD3-shaped update; prints one JSON object.

    .venv/bin/python bench/network_throughput.py [--quick] [--device cpu|cuda|all]

Measured (EMT Cu, compact 8- and 32-atom clusters, 64 graphs per batch):
  ``throughput[device][config][n_atoms]``: forward and forward+backward graphs/s of the actor
  and of one critic, for the default NetworkConfig and a light one.
  ``td3_update_s_256x8``: one TD3-shaped update on 256 eight-atom graphs with the default
  config on CPU (torch threads = 2): target actor + twin target critics (3 forwards, no grad),
  twin critic forward+backward+Adam, actor forward + critic-1 forward + backward + Adam,
  Polyak averaging. Target: < 0.5 s (``td3_target_s``), side by side with the light config
  and with the presets' agent (``td3_update_s_256x8_quasi_newton``: quasi-Newton head over 5
  remembered steps of path history, element descriptors).
  ``neighbor_lists``: time to build neighbour lists for 256 observations (clusters and
  periodic bulk, 8 and 32 atoms) and of ``batch_graphs`` with precomputed edges, beside the
  update time: the numbers behind the placement decision in learner/graph.py.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import (
    EnvConfig,  # noqa: E402
    NetworkConfig,  # noqa: E402
)
from common.observation import Observation  # noqa: E402
from learner.blocks import count_parameters  # noqa: E402
from learner.critic import Critic, TwinCritic  # noqa: E402
from learner.graph import Graph, batch_graphs, neighbor_list  # noqa: E402
from learner.heads import Actor, build_actor  # noqa: E402

ENV = EnvConfig()  # the networks' env.max_step and env.env_input_dim (0: no env features)
PRESET = dict(actor_head="quasi-newton", path_history=True, species="descriptors", step_size=0.0143)
PRESET_ENV = EnvConfig(history_steps=5)  # configs/demo.toml's agent
LIGHT = dict(channels=8, num_layers=2, num_basis=6, radial_hidden=16, radius=4.5)


def observe(atoms: Atoms) -> Observation:
    atoms.calc = EMT()
    return Observation.from_atoms(atoms)


_BLOCK = bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)


def cu_cluster(n: int, seed: int) -> Observation:
    """The n fcc sites nearest a random point, rattled by 0.1 Å (compact EMT Cu cluster)."""
    rng = np.random.default_rng(seed)
    centre = _BLOCK.positions.mean(axis=0) + rng.normal(size=3)
    idx = np.argsort(np.linalg.norm(_BLOCK.positions - centre, axis=1))[:n]
    atoms = Atoms(f"Cu{n}", positions=_BLOCK.positions[idx])
    atoms.rattle(0.1, seed=seed)
    return observe(atoms)


def cu_bulk(n: int, seed: int) -> Observation:
    """Rattled periodic fcc Cu with n = 8 (cubic × 2x1x1) or 32 (cubic × 2x2x2) atoms."""
    reps = {8: (2, 1, 1), 32: (2, 2, 2)}[n]
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    atoms.rattle(0.1, seed=seed)
    return observe(atoms)


def timed(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Median wall time of fn() in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(cfg: NetworkConfig, obs: list[Observation], device: str, repeats: int) -> dict:
    g = batch_graphs(obs, cfg, device=device)
    actor = Actor(cfg, ENV).to(device)
    critic = Critic(cfg, ENV).to(device)  # one of the twins
    action = actor(g).detach()

    def actor_fwd() -> None:
        with torch.no_grad():
            actor(g)

    def actor_fwd_bwd() -> None:
        actor.zero_grad(set_to_none=True)
        actor(g).square().sum().backward()

    def critic_fwd() -> None:
        with torch.no_grad():
            critic(g, action)

    def critic_fwd_bwd() -> None:
        critic.zero_grad(set_to_none=True)
        critic(g, action).sum().backward()

    out = {}
    for name, fn in [
        ("actor_forward", actor_fwd),
        ("actor_forward_backward", actor_fwd_bwd),
        ("critic_forward", critic_fwd),
        ("critic_forward_backward", critic_fwd_bwd),
    ]:
        out[f"{name}_graphs_per_s"] = round(len(obs) / timed(fn, repeats, device), 1)
    out["edges_per_graph"] = round(g.n_edges / g.n_graphs, 1)
    return out


class TD3Shaped:
    """The tensor work of one TD3 update (no replay, no losses' bells and whistles)."""

    def __init__(self, cfg: NetworkConfig, device: str, env: EnvConfig = ENV) -> None:
        self.actor, self.critic = build_actor(cfg, env).to(device), TwinCritic(cfg, env).to(device)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=3e-4)

    def update(self, g: Graph, g_next: Graph, action: torch.Tensor, reward: torch.Tensor) -> None:
        with torch.no_grad():  # 3 target forwards
            a_next = self.actor_t(g_next)
            a_next = a_next + (0.02 * torch.randn_like(a_next)).clamp(-0.05, 0.05)
            q1_t, q2_t = self.critic_t(g_next, a_next)
            y = reward + 0.95 * torch.minimum(q1_t, q2_t)  # [G]
        q1, q2 = self.critic(g, action)
        critic_loss = (q1 - y).square().mean() + (q2 - y).square().mean()
        self.opt_c.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_c.step()
        actor_loss = -self.critic.q1(g, self.actor(g)).mean()
        self.opt_a.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, p_t in zip(net.parameters(), target.parameters()):
                    p_t.lerp_(p, 0.005)


def td3_update_s(cfg: NetworkConfig, obs: list[Observation], obs_next: list[Observation], device: str, repeats: int,
                 env: EnvConfig = ENV) -> float:
    rng = np.random.default_rng(0)
    if cfg.path_history:  # a path of env.history_steps small moves and force changes
        obs, obs_next = ([dataclasses.replace(o, history=0.01 * rng.normal(size=(o.n_atoms, 6 * env.history_steps)))
                          for o in batch] for batch in (obs, obs_next))
    g, g_next = batch_graphs(obs, cfg, device=device), batch_graphs(obs_next, cfg, device=device)
    action = torch.as_tensor(0.05 * rng.normal(size=(g.n_atoms, 3)), dtype=g.dtype, device=device)
    reward = torch.as_tensor(-rng.random(g.n_graphs), dtype=g.dtype, device=device)
    td3 = TD3Shaped(cfg, device, env)
    return timed(lambda: td3.update(g, g_next, action, reward), repeats, device)


def neighbor_list_costs(cfg: NetworkConfig, batch: int, sizes: tuple[int, ...], repeats: int) -> dict:
    out = {}
    for n in sizes:
        for kind, make in (("cluster", cu_cluster), ("bulk", cu_bulk)):
            obs = [make(n, seed) for seed in range(batch)]
            out[f"neighbor_lists_{kind}_{batch}x{n}_s"] = round(
                timed(lambda obs=obs: [neighbor_list(o.positions, o.cell, o.pbc, cfg.radius, cfg.max_neighbors) for o in obs],
                      repeats, "cpu"),
                4,
            )
            with_edges = []
            for o in obs:
                ei, es = neighbor_list(o.positions, o.cell, o.pbc, cfg.radius, cfg.max_neighbors)
                with_edges.append(dataclasses.replace(o, edge_index=ei, edge_shift=es))
            out[f"batch_graphs_given_edges_{kind}_{batch}x{n}_s"] = round(
                timed(lambda with_edges=with_edges: batch_graphs(with_edges, cfg), repeats, "cpu"), 4
            )
            out[f"edge_bytes_per_obs_{kind}_{n}"] = int(with_edges[0].edge_index.nbytes + with_edges[0].edge_shift.nbytes)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 32-atom TD3 update skipped (< 40 s)")
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"], help="'all' = CPU and CUDA when present")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    repeats = 2 if args.quick else 5
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")

    default, light = NetworkConfig(), NetworkConfig(**LIGHT)
    configs = {"default": default, "light": light}
    t_start = time.perf_counter()
    batches = {n: [cu_cluster(n, seed) for seed in range(64)] for n in (8, 32)}
    result: dict = {
        "bench": "network_throughput",
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),  # other work on a shared machine skews timings
        "configs": {
            name: {**dataclasses.asdict(cfg), "params_actor": count_parameters(Actor(cfg, ENV)),
                   "params_critic": count_parameters(Critic(cfg, ENV))}
            for name, cfg in configs.items()
        },
        "throughput": {},
    }
    for device in devices:
        dev_name = device if device == "cpu" else f"cuda:{torch.cuda.get_device_name()}"
        result["throughput"][dev_name] = {
            name: {f"{n}_atoms_x64": throughput(cfg, batches[n], device, repeats) for n in (8, 32)}
            for name, cfg in configs.items()
        }

    obs8 = [cu_cluster(8, seed) for seed in range(256)]
    obs8_next = [cu_cluster(8, 1000 + seed) for seed in range(256)]
    result["td3_update_s_256x8"] = round(td3_update_s(default, obs8, obs8_next, "cpu", repeats), 4)
    result["td3_update_s_256x8_light"] = round(td3_update_s(light, obs8, obs8_next, "cpu", repeats), 4)
    result["td3_update_s_256x8_quasi_newton"] = round(
        td3_update_s(NetworkConfig(**PRESET), obs8, obs8_next, "cpu", repeats, PRESET_ENV), 4)
    torch.set_num_threads(1)  # a learner sharing its cores with actors may prefer one thread
    result["td3_update_s_256x8_1thread"] = round(td3_update_s(default, obs8, obs8_next, "cpu", repeats), 4)
    torch.set_num_threads(2)
    result["td3_target_s"] = 0.5
    result["td3_under_target"] = result["td3_update_s_256x8"] < 0.5
    if not args.quick:
        obs32 = [cu_cluster(32, seed) for seed in range(256)]
        obs32_next = [cu_cluster(32, 1000 + seed) for seed in range(256)]
        result["td3_update_s_256x32"] = round(td3_update_s(default, obs32, obs32_next, "cpu", 3), 4)
    if "cuda" in devices:
        result["td3_update_s_256x8_cuda"] = round(td3_update_s(default, obs8, obs8_next, "cuda", repeats), 4)
    result.update(neighbor_list_costs(default, 256, (8, 32), 1 if args.quick else repeats))
    result["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
