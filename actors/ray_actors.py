"""The only module of ``actors/`` that imports Ray: it wraps the plain classes as Ray actors.

    hub = RemoteCoordinator.options(name=...).remote(curriculum, t_total, seed)
    a = make_actor("online", config, replay_client, hub, actor_id, seed)
    done = a.run.remote()        # loops until hub.stop.remote()

Weights travel through the object store: the learner's side calls :func:`publish_weights`
(one ``ray.put``), the coordinator keeps the reference, and an actor pulls it only when its
version is stale.
"""
from __future__ import annotations

import os
from typing import Any

import ray

from actors.coordinator import Coordinator
from actors.loop import ExpertActor, OnlineActor

RemoteCoordinator = ray.remote(num_cpus=0, max_restarts=0)(Coordinator)


class HubClient:
    """Plain-method view of a remote Coordinator, so the actor loops need no Ray."""

    def __init__(self, handle):
        self.handle = handle

    def next_structure(self):
        return ray.get(self.handle.next_structure.remote())

    def add_steps(self, kind: str, n: int, stats: dict | None = None) -> tuple[int, bool, int]:
        return tuple(ray.get(self.handle.add_steps.remote(kind, n, stats)))

    def report_episode(self, *args) -> None:
        self.handle.report_episode.remote(*args)  # fire and forget

    def weights_if_newer(self, version: int):
        got = ray.get(self.handle.weights_if_newer.remote(version))
        if got is None:
            return None
        v, refs = got
        return v, ray.get(refs[0])


def publish_weights(hub_handle, version: int, state: dict) -> None:
    """One ``ray.put`` of the actor weights; the coordinator keeps only the reference (in a list, so Ray does not resolve it)."""
    ref = ray.put(state)
    ray.get(hub_handle.publish.remote(version, [ref]))


class ActorProcess:
    """A Ray actor process running one Online/Expert actor loop; restarted by Ray on a crash."""

    def __init__(self, kind: str, config, writer, hub_handle, actor_id: int, seed: int):
        import torch

        torch.set_num_threads(1)
        cls = OnlineActor if kind == "online" else ExpertActor
        self.loop = cls(config, writer, HubClient(hub_handle), actor_id=actor_id, seed=seed)
        self._metrics = None
        try:
            from actors.ray_metrics import RayMetrics

            self._metrics = RayMetrics()
        except Exception:  # metrics are optional; the loop must run without them
            self._metrics = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, max_steps: int = 0) -> int:
        return self.loop.run(max_steps, on_step=self._record)

    def _record(self, stats: dict[str, float]) -> None:
        m = self._metrics
        if m is None:
            return
        loop = self.loop
        try:
            m.inc("relaxrl_env_steps_total", len(loop.envs), kind=loop.kind)
            for ep in loop.finished:
                m.observe("relaxrl_episode_force_calls", ep["force_calls"])
            if loop.kind == "online":
                m.set("relaxrl_actual_move_angstrom", stats["actual_move"])
                m.set("relaxrl_a_back_ratio", stats["a_back"])
                if "action_scale" in stats:
                    m.set("relaxrl_action_scale", stats["action_scale"])
                if loop.finished:
                    m.set("relaxrl_fmax_ev_per_angstrom", loop.finished[-1]["fmax"])
                    m.set("relaxrl_success_ratio", loop.success_rate())
        except Exception as e:  # metrics must never stop an actor
            print(f"relaxrl actor {loop.actor_id}: metrics disabled after error: {e}")
            self._metrics = None


def make_actor(kind: str, config, writer, hub_handle, actor_id: int, seed: int):
    """A restartable Ray actor; a crashed one is restarted and its ``run`` task retried."""
    n = config.actors.max_restarts
    cls = ray.remote(ActorProcess).options(num_cpus=config.actors.num_cpus, max_restarts=n, max_task_retries=n,
                                           max_concurrency=2,  # pid() and stats answer while run() loops
                                           name=None)
    return cls.remote(kind, config, writer, hub_handle, actor_id, seed)
