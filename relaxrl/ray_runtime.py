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
import signal
import socket
import threading
import uuid
from contextlib import contextmanager, nullcontext
from typing import Any

import ray
from ray._private import ray_constants, services

from actors.curriculum import Curriculum
from actors.ray_actors import HubClient, RemoteCoordinator, make_actor
from common.config import RunConfig
from common.errors import RelaxRLError

# HTTP/2 client preface + an empty SETTINGS frame: a gRPC server (Ray's GCS) answers with a SETTINGS frame
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_RAY_ADDRESS_HELP = ("give the head node's GCS address (host:port, default port 6379, as `ray start --head` "
                     "prints it), 'auto' on a node of the cluster, or omit --address for a local Ray instance")


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail within ``timeout_s``, in one line, unless ``address`` is a Ray GCS that answers.

    Ray itself keeps retrying an unreachable or silent GCS for minutes (and hangs on a port that is
    not Ray's), so the address is resolved ('auto': the cluster this node belongs to) and probed
    first: a TCP connection, then an HTTP/2 handshake (the GCS is a gRPC server). ``ray://`` client
    addresses are left to Ray.
    """
    if address.startswith("ray://"):
        return
    target = address
    if address == "auto" or not address.rpartition(":")[2].isdigit():
        try:
            target = services.canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RelaxRLError(f"--address {address}: no running Ray cluster found ({str(e).splitlines()[0]}); "
                               f"{_RAY_ADDRESS_HELP}") from None
        except SystemExit:
            raise RelaxRLError(f"--address {address}: no running Ray cluster found; {_RAY_ADDRESS_HELP}") from None
    host, _, port = target.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise RelaxRLError(f"--address {address}: not a host:port Ray address; {_RAY_ADDRESS_HELP}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            conn.settimeout(timeout_s)
            conn.sendall(_H2_PREFACE)
            head = conn.recv(9)
    except TimeoutError:
        raise RelaxRLError(f"--address {address}: {target} accepted a connection but did not answer as a Ray GCS "
                           f"within {timeout_s:g} s (not Ray's port?); {_RAY_ADDRESS_HELP}") from None
    except OSError as e:
        raise RelaxRLError(f"cannot reach Ray at --address {address}: {e.strerror or e}; is the head node running "
                           f"(`ray status` there)? Else {_RAY_ADDRESS_HELP}") from None
    if len(head) < 9 or head[3] != 0x04:  # frame type 4: SETTINGS
        raise RelaxRLError(f"--address {address}: {target} is not a Ray GCS (it does not speak gRPC; "
                           f"answered {head[:16]!r}); {_RAY_ADDRESS_HELP}")


@contextmanager
def _loopback_node():
    """Let ``ray.init`` give this machine's node the address 127.0.0.1, so a local Ray listens on loopback only.

    Ray replaces a loopback ``_node_ip_address`` by the machine's outward address unless its
    single-machine mode is on (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when ray is imported);
    with the node at 127.0.0.1 the GCS, the raylet, the workers and the agents bind 127.0.0.1
    (checked with ``ss -ltnp`` in tests/test_security.py).
    """
    old = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


@contextmanager
def _keep_sigterm_handler():
    """Put back a Python SIGTERM handler the caller installed (the launcher's, which stops a run like Ctrl-C)
    after ``ray.init`` replaced it: Ray installs a handler that exits at once and, in its core worker, one
    that prints a C++ stack, and neither writes the final checkpoint or stops the run's processes."""
    before = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    finally:
        if callable(before):
            signal.signal(signal.SIGTERM, before)


class RayRuntime:
    """Ray for one training run; :meth:`close` undoes what it started (a Ray it joined stays up)."""

    def __init__(self, address: str | None, num_cpus: int = 0, metrics_port: int = 0):
        self.started = False
        self.hub: HubClient | None = None
        self.actors: list = []  # Ray actor handles, online first
        self.runs: list = []  # their run() object refs
        self.kinds: list[str] = []  # their kinds, in the same order
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        if address:  # the launcher has checked it with check_ray_address before anything started
            kwargs["address"] = address
        else:  # a single-machine run: every Ray process listens on 127.0.0.1 only
            kwargs["num_cpus"] = num_cpus or os.cpu_count()
            kwargs["_node_ip_address"] = "127.0.0.1"
            if metrics_port:
                kwargs["_metrics_export_port"] = metrics_port
        try:
            with (_loopback_node() if not address else nullcontext()), _keep_sigterm_handler():
                ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RelaxRLError(f"cannot start or join Ray (address={address or 'local'}): {e}. "
                               "Check `ray status` on the head node or omit --address for a local instance") from None
        self.started = True

    def start_hub(self, curriculum: Curriculum, seed: int) -> HubClient:
        """The run's coordinator actor (structures, weights, counters), seen through plain methods.

        It is a named actor (a name of its own for each run, in this job's namespace), which the actor
        processes look up by name when they start or restart."""
        name = f"relaxrl-coordinator-{uuid.uuid4().hex[:12]}"
        self.hub = HubClient(RemoteCoordinator.options(name=name).remote(curriculum, 0, seed), name)
        return self.hub

    def start_actors(self, cfg: RunConfig, writer, hub: HubClient, seed: int) -> None:
        """``actors.num_online`` online and ``actors.num_expert`` expert actor processes, each looping until stopped."""
        a = cfg.actors
        kinds = ["online"] * a.num_online + ["expert"] * a.num_expert
        for actor_id, kind in enumerate(kinds):
            self.actors.append(make_actor(kind, cfg, writer, hub.name, actor_id, seed))
        self.kinds = kinds
        self.runs = [x.run.remote() for x in self.actors]

    def ended_actors(self) -> list[str]:
        """One line per actor whose ``run`` loop has ended while the run goes on (an error in the loop, or restarts
        used up), naming the actor, its kind and the first line of its error; empty while every loop runs. It does
        not wait. Ray retries a loop whose process crashed (``actors.max_restarts``), so only an error the loop
        raised, or a death past the restarts, shows here; the process of the first may live on, stepping nothing."""
        if not self.runs:
            return []
        done, _ = ray.wait(self.runs, num_returns=len(self.runs), timeout=0)
        out = []
        for ref in done:
            i = self.runs.index(ref)
            try:
                ray.get(ref, timeout=1)
                why = "its loop returned"
            except Exception as e:  # the loop's own error, or Ray's word that the actor died
                lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                why = lines[-1] if lines else type(e).__name__
            out.append(f"actor {i} ({self.kinds[i] if i < len(self.kinds) else '?'}): {why}")
        return out

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the actors (their loops end after the current step, waiting up to ``timeout_s``), then end them and
        shut Ray down if this started it.

        The actors' ``run`` loops are asked to stop twice over: through the coordinator, and directly
        (``request_stop``, which also ends an insert waiting for the rate limiter now that the learner no
        longer samples). Only once the loops have returned are the actors ended (``ray.kill``): no task is
        killed while it runs, so Ray prints no "Task ActorProcess.run failed ... killed by ray.kill" lines
        at a normal finish (a loop still running after ``timeout_s`` is killed all the same).
        """
        try:
            if ray.is_initialized():
                if self.runs:
                    try:
                        if self.hub is not None:
                            self.hub.stop(timeout_s=10)
                    except Exception:  # a dead coordinator: the direct requests below still stop the loops
                        pass
                    for x in self.actors:
                        x.request_stop.remote()
                    done, _ = ray.wait(self.runs, num_returns=len(self.runs), timeout=timeout_s)
                    _drain(done)  # read every result, so Ray prints no "unhandled error" for it
                # loops still running are killed below: drop their refs first, so their ActorDiedError is
                # never stored for anyone
                self.runs = []
                for x in self.actors:  # their loops have returned: nothing of theirs runs any more
                    ray.kill(x)
                self.actors = []
        finally:
            if self.started:
                ray.shutdown()
                self.started = False


def _drain(refs: list) -> None:
    """Read finished object refs, ignoring their errors (an actor loop that failed, an actor that exited)."""
    for ref in refs:
        try:
            ray.get(ref, timeout=1)
        except Exception:  # the actor is being stopped anyway
            pass
