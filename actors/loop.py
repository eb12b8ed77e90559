"""The actor loops: environments stepped together, transitions written to the replay in batches.

``OnlineActor`` acts with the current policy plus Gaussian exploration noise whose σ decays
with t_total. ``ExpertActor`` drives the same environments with one BFGS iteration per step
(``fake_step``) with the probability of the ``nfake`` schedule, and with the policy
otherwise; its BFGS steps go to the ``expert`` table with ``a_expert`` filled, its policy
steps to ``online``.

Both talk to two objects only: a *hub* (``actors.coordinator.Coordinator`` or the Ray
adapter of it: structures, weights, counters) and a *writer* with
``insert(table, transitions, priorities)`` (the replay client). No Ray here.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np

from actors.env import RelaxEnv
from actors.expert import BFGSExpert, fake_step_probability
from common.observation import Observation
from learner.graph import with_neighbor_list
from learner.policy import Policy
from common.schedules import linear
from common.transition import Transition


class OnlineActor:
    kind = "online"

    def __init__(self, config, writer, hub, actor_id: int = 0, seed: int = 0):
        self.config = config
        self.writer, self.hub = writer, hub
        self.actor_id = actor_id
        self.rng = np.random.default_rng([seed, actor_id, 7919])
        n = config.actors.envs_per_actor
        self.envs = [RelaxEnv(config.env) for _ in range(n)]
        self.experts = [BFGSExpert(maxstep=config.expert.maxstep) for _ in range(n)]
        self.policy = Policy(config, device="cpu")
        self.obs: list[Observation | None] = [None] * n
        self.pending: dict[str, list[Transition]] = {"online": [], "expert": []}
        self.t_total = 0
        self.steps = 0
        self.stop_requested = False
        self.latest_version: int | None = None  # newest version the hub announced (None = ask)
        self.nonfinite_actions = 0  # steps whose action was NaN/inf: applied as no move, not stored
        self.last_stats: dict[str, float] = {}
        self.finished: list[dict] = []  # episodes finished since the caller last cleared it
        self._recent: deque[bool] = deque(maxlen=50)

    # -- helpers ----------------------------------------------------------------------------
    def sync_weights(self) -> bool:
        """Pull the newest weights when the hub announced a version newer than ours."""
        if self.latest_version is not None and self.latest_version <= self.policy.version:
            return False
        got = self.hub.weights_if_newer(self.policy.version)
        if got is None:
            return False
        version, state = got
        self.policy.load_weights(state, version)
        return True

    def _reset(self, i: int) -> None:
        atoms = self.hub.next_structure()
        # neighbour lists are built here, once per state, and travel with the transition
        # (measured in learner/graph.py: cheaper than on the learner)
        self.obs[i] = with_neighbor_list(self.envs[i].reset(atoms), self.config.network)
        self.experts[i].reset()

    def sigma(self) -> float:
        a = self.config.actors
        return linear(a.sigma_start, a.sigma_end, a.sigma_decay_steps, self.t_total)

    def choose_tables(self) -> list[str]:
        return ["online"] * len(self.envs)

    def success_rate(self) -> float:
        """Share of this actor's last 50 episodes that converged."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def _flush(self, force: bool = False) -> None:
        for table, items in self.pending.items():
            if items and (force or len(items) >= self.config.actors.insert_batch):
                self.writer.insert(table, items, None)
                items.clear()

    # -- one step of every environment --------------------------------------------------------
    def step(self) -> dict[str, float]:
        """Step all environments once (one batched policy forward); returns per-step means."""
        for i, o in enumerate(self.obs):
            if o is None:
                self._reset(i)
        tables = self.choose_tables()
        use_policy = [k for k, t in enumerate(tables) if t == "online"]
        actions: list[np.ndarray | None] = [None] * len(self.envs)
        scales: list[float] = []
        if use_policy:
            acts, sc = self.policy.act_batch([self.obs[k] for k in use_policy], return_scale=True)
            sigma = self.sigma()
            f_ref = self.config.actors.noise_force_scale
            for k, a in zip(use_policy, acts):
                f = np.linalg.norm(self.obs[k].forces, axis=1, keepdims=True)  # [n_atoms, 1] eV/Å
                scale = sigma * np.minimum(1.0, f / f_ref) if f_ref > 0 else sigma
                actions[k] = a + self.rng.normal(0.0, 1.0, size=a.shape) * scale
            scales = list(sc)
        moves, backs, rewards, fmaxes = [], [], [], []
        for i, env in enumerate(self.envs):
            obs = self.obs[i]
            a_expert = self.experts[i].action(obs) if tables[i] == "expert" else None
            action = a_expert if tables[i] == "expert" else actions[i]
            res = env.step(action)
            info = res.info
            next_obs = with_neighbor_list(res.obs, self.config.network)
            action = np.asarray(action, dtype=np.float64)
            if np.isfinite(action).all():
                self.pending[tables[i]].append(Transition(
                    obs=obs, action=action, actual_move=info["actual_move"],
                    reward=float(res.reward), terminated=bool(res.terminated), truncated=bool(res.truncated),
                    next_obs=next_obs, a_back=float(info["a_back"]), expert_action=a_expert))
            else:  # a diverged policy: the env applied no move; the step is not stored (the codec refuses NaN)
                self.nonfinite_actions += 1
            moves.append(info["actual_move_norm"]), backs.append(info["a_back"])
            rewards.append(res.reward), fmaxes.append(info["fmax"])
            if res.terminated or res.truncated:
                self.finished.append({"converged": bool(info["converged"]), "force_calls": int(info["force_calls"]),
                                      "fmax": float(info["fmax"]), "steps": int(info["steps"])})
                self._recent.append(bool(info["converged"]))
                self.hub.report_episode(self.kind if tables[i] == "online" else "expert", bool(info["converged"]),
                                        int(info["steps"]), int(info["force_calls"]), float(info["fmax"]))
                self.obs[i] = None
            else:
                self.obs[i] = next_obs
        self._flush()
        self.steps += len(self.envs)
        stats = {"actual_move": float(np.mean(moves)), "a_back": float(np.mean(backs)),
                 "reward": float(np.mean(rewards)), "fmax": float(np.mean(fmaxes))}
        if scales:
            stats["action_scale"] = float(np.mean(scales))
        self.t_total, self.stop_requested, self.latest_version = self.hub.add_steps(self.kind, len(self.envs), stats)
        self.last_stats = stats
        return stats

    def run(self, max_steps: int = 0, on_step: Callable[[dict[str, float]], None] | None = None) -> int:
        """Step until the hub says stop (or ``max_steps`` environment steps); returns steps taken.

        ``on_step(stats)`` sees each step's means while ``self.finished`` still lists the
        episodes that step ended (the Ray wrapper records metrics there).
        """
        start = self.steps
        try:
            while not self.stop_requested:
                if max_steps and self.steps - start >= max_steps:
                    break
                self.sync_weights()
                stats = self.step()
                if on_step is not None:
                    on_step(stats)
                self.finished.clear()
        finally:
            self._flush(force=True)
        return self.steps - start


class ExpertActor(OnlineActor):
    kind = "expert"

    def choose_tables(self) -> list[str]:
        p = fake_step_probability(self.t_total, self.config.expert)
        return ["expert" if self.rng.random() < p else "online" for _ in self.envs]
