"""The one relaxrl module that imports Ray: start or join Ray, run the coordinator and the actor processes.

    cluster = RayRuntime(address=None, num_cpus=0, metrics_port=0)  # a local Ray (or joins `address`)
    hub = cluster.start_hub(curriculum, seed)                          # actors.ray_actors.HubClient
    cluster.start_actors(cfg, replay_client, hub, seed)                # online + expert actor processes
    cluster.close()                                                    # stop, kill, shut down what it started

The launcher (``relaxrl.launcher``) wires a run through this class and the plain-method
``HubClient``; the actor processes themselves are wrapped in ``actors.ray_actors``.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray

from actors.ray_actors import HubClient, RemoteCoordinator, make_actor
from actors.structures import Curriculum
from common.config import RunConfig
from common.errors import RelaxRLError


def check_ray_address(address: str) -> None:
    """Fail at once, in one line, when an explicit host:port Ray address accepts no connection.

    Ray itself keeps retrying an unreachable GCS for minutes; 'auto' and other forms are left to Ray.
    """
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5.0):
            pass
    except OSError as e:
        raise RelaxRLError(f"cannot reach Ray at --address {address}: {e.strerror or e}. Is the head node running "
                           "(`ray status` there), and is this the host:port of its GCS (default port 6379)? "
                           "Omit --address for a local Ray instance") from None


class RayRuntime:
    """Ray for one training run; :meth:`close` undoes what it started (a Ray it joined stays up)."""

    def __init__(self, address: str | None, num_cpus: int = 0, metrics_port: int = 0):
        self.started = False
        self.hub: HubClient | None = None
        self.actors: list = []  # Ray actor handles, online first
        self.runs: list = []  # their run() object refs
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address:  # the launcher has checked it with check_ray_address before anything started
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus or os.cpu_count()
            if metrics_port:
                kwargs["_metrics_export_port"] = metrics_port
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RelaxRLError(f"cannot start or join Ray (address={address or 'local'}): {e}. "
                               "Check `ray status` on the head node or omit --address for a local instance") from None
        self.started = True

    def start_hub(self, curriculum: Curriculum, seed: int) -> HubClient:
        """The run's coordinator actor (structures, weights, counters), seen through plain methods."""
        self.hub = HubClient(RemoteCoordinator.remote(curriculum, 0, seed))
        return self.hub

    def start_actors(self, cfg: RunConfig, writer, hub: HubClient, seed: int) -> None:
        """``actors.num_online`` online and ``actors.num_expert`` expert actor processes, each looping until stopped."""
        a = cfg.actors
        kinds = ["online"] * a.num_online + ["expert"] * a.num_expert
        for actor_id, kind in enumerate(kinds):
            self.actors.append(make_actor(kind, cfg, writer, hub.handle, actor_id, seed))
        self.runs = [x.run.remote() for x in self.actors]

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the actors to stop (waiting up to ``timeout_s``), kill them, shut Ray down if this started it."""
        try:
            if ray.is_initialized():
                if self.hub is not None and self.runs:
                    self.hub.stop(timeout_s=10)
                    ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout_s)
                for x in self.actors:
                    ray.kill(x)
        finally:
            if self.started:
                ray.shutdown()
                self.started = False
