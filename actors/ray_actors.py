"""The only module of ``actors/`` that imports Ray: it wraps the plain classes as Ray actors.

    hub = RemoteCoordinator.options(name=hub_name).remote(curriculum, t_total, seed)
    a = make_actor("online", config, replay_client, hub_name, actor_id, seed)
    done = a.run.remote()        # loops until hub.stop.remote()

The loop itself is ``actors.loop.ActorLoop``; :class:`ActorProcess` only gives it a hub
(:class:`HubClient`) and turns each ``StepRecord`` it returns into Prometheus metrics.

Weights travel through the object store: the learner's side calls :meth:`HubClient.publish`
(one ``ray.put``), the coordinator keeps the reference, and an actor pulls it only when its
version is stale.
"""
from __future__ import annotations

import os

import ray
import torch

from actors.coordinator import Coordinator
from actors.loop import ActorLoop, StepRecord
from actors.ray_metrics import RayMetrics

RemoteCoordinator = ray.remote(num_cpus=0, max_restarts=0)(Coordinator)


class HubClient:
    """Plain-method view of a remote Coordinator, so the actor loops and the launcher need no Ray."""

    def __init__(self, handle, name: str | None = None):
        self.handle = handle
        self.name = name  # the coordinator's Ray actor name, when it has one (actor processes find it by it)

    # -- the actors' side

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

    # -- the learner's and the launcher's side
    def publish(self, version: int, state: dict) -> None:
        """One ``ray.put`` of the actor weights; the coordinator keeps only the reference (in a list, so Ray does not resolve it)."""
        ref = ray.put(state)
        ray.get(self.handle.publish.remote(version, [ref]))

    def current_t_total(self) -> int:
        return ray.get(self.handle.current_t_total.remote())

    def continue_from(self, t_total: int) -> None:
        ray.get(self.handle.continue_from.remote(t_total))

    def stats(self) -> dict[str, float]:
        return ray.get(self.handle.stats.remote())

    def stop(self, timeout_s: float | None = None) -> None:
        ray.get(self.handle.stop.remote(), timeout=timeout_s)


class ActorProcess:
    """A Ray actor process running one Online/Expert actor loop; restarted by Ray on a crash."""

    def __init__(self, kind: str, config, writer, hub_name: str, actor_id: int, seed: int):
        if not config.actors.num_gpus:  # Ray leaves GPUs visible to an actor that reserved none: keep its calculator off them
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        torch.set_num_threads(1)
        hub = HubClient(ray.get_actor(hub_name), hub_name)
        self.loop = ActorLoop(kind, config, writer, hub, actor_id=actor_id, seed=seed)
        try:
            self._metrics: RayMetrics | None = RayMetrics()
        except Exception:  # metrics are optional; the loop must run without them
            self._metrics = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, max_steps: int = 0) -> int:
        return self.loop.run(max_steps, on_step=self._record)

    def request_stop(self) -> None:
        """End ``run`` after its current step, also when it waits for the rate limiter (runs beside ``run``)."""
        self.loop.request_stop()

    def _record(self, rec: StepRecord) -> None:
        m = self._metrics
        if m is None:
            return
        try:
            m.inc("relaxrl_env_steps_total", rec.n_envs, kind=rec.kind)
            for ep in rec.episodes:
                m.observe("relaxrl_episode_force_calls", ep.force_calls)
            if rec.kind == "online":
                m.set("relaxrl_actual_move_angstrom", rec.actual_move)
                m.set("relaxrl_a_back_ratio", rec.a_back)
                if rec.action_scale is not None:
                    m.set("relaxrl_action_scale", rec.action_scale)
                if rec.episodes:
                    m.set("relaxrl_fmax_ev_per_angstrom", rec.episodes[-1].fmax)
                    m.set("relaxrl_success_ratio", rec.success_rate)
        except Exception as e:  # metrics must never stop an actor
            print(f"relaxrl actor {self.loop.actor_id}: metrics disabled after error: {e}")
            self._metrics = None


def make_actor(kind: str, config, writer, hub_name: str, actor_id: int, seed: int):
    """A restartable Ray actor; a crashed one is restarted and its ``run`` task retried.

    Every constructor argument is a plain value passed inline: the coordinator goes by its name, not
    its handle. A handle holds an object ref, which Ray counts as an argument in the object store
    that a restart may not find (ray-project/ray#53727; Ray logs an error line for each such actor).
    """
    n = config.actors.max_restarts
    cls = ray.remote(ActorProcess).options(num_cpus=config.actors.num_cpus, num_gpus=config.actors.num_gpus,
                                           max_restarts=n, max_task_retries=n,
                                           max_concurrency=2,  # pid() and stats answer while run() loops
                                           name=None)
    return cls.remote(kind, config, writer, hub_name, actor_id, seed)
