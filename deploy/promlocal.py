"""Run Prometheus natively (no Docker) against a local relaxrl run, with deploy/prometheus.yml.

    python deploy/promlocal.py [--ray-sd /tmp/ray/prom_metrics_service_discovery.json]
                               [--replay 127.0.0.1:9101] [--port 9090] [--data-dir DIR]

It renders deploy/prometheus.yml with local paths and targets (same jobs, same names, so the
Grafana dashboard's queries work unchanged) and runs Debian's ``prometheus`` binary in the
foreground. Tests use :class:`LocalPrometheus`, which does the same in the background for a
bounded time and answers PromQL through the HTTP API.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

DEPLOY_DIR = Path(__file__).resolve().parent
PROMETHEUS_YML = DEPLOY_DIR / "prometheus.yml"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
"""Where the Ray head writes its list of metrics endpoints (Prometheus file_sd format)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_sd_file(path: Path, targets: list[str], job: str = "ray") -> Path:
    """Write a file_sd file listing ``targets`` (host:port), in the format Ray writes."""
    path.write_text(json.dumps([{"labels": {"job": job}, "targets": list(targets)}]))
    return path


def render_config(ray_sd_file: str | Path = RAY_SD_FILE, replay_targets: list[str] | None = None,
                  scrape_interval: str | None = None, source: Path = PROMETHEUS_YML) -> str:
    """deploy/prometheus.yml with the ray job reading ``ray_sd_file`` and the replay job
    scraping ``replay_targets`` (no replay job when the list is empty)."""
    cfg: dict[str, Any] = yaml.safe_load(source.read_text())
    if scrape_interval:
        cfg["global"]["scrape_interval"] = scrape_interval
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    jobs["ray"]["file_sd_configs"] = [{"files": [str(ray_sd_file)], "refresh_interval": "5s"}]
    if replay_targets:
        jobs["relaxrl-replay"]["static_configs"] = [{"targets": list(replay_targets)}]
    else:
        cfg["scrape_configs"] = [j for j in cfg["scrape_configs"] if j["job_name"] != "relaxrl-replay"]
    return yaml.safe_dump(cfg, sort_keys=False)


class LocalPrometheus:
    """A ``prometheus`` process on 127.0.0.1 with a temporary config and data directory.

    >>> with LocalPrometheus(render_config(sd, ["127.0.0.1:9101"], "1s")) as prom:
    ...     prom.wait_for("relaxrl_replay_size", timeout=20)
    """

    def __init__(self, config_text: str, binary: str = "prometheus", port: int | None = None) -> None:
        exe = shutil.which(binary)
        if exe is None:
            raise FileNotFoundError(f"{binary} not found: install Debian's 'prometheus' package "
                                    f"(scripts/sysdeps.sh does it as root)")
        self.exe = exe
        self.config_text = config_text
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> LocalPrometheus:
        """Start the process and wait until ``/-/ready`` answers."""
        self._tmp = tempfile.TemporaryDirectory(prefix="relaxrl-prom-")
        tmp = Path(self._tmp.name)
        (tmp / "prometheus.yml").write_text(self.config_text)
        self.log_path = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [self.exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {ready_timeout} s")

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text(errors="replace") if self._tmp else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data``, raises on an error status (e.g. bad PromQL)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise ValueError(f"prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant PromQL query; the result vector (``[{"metric": {...}, "value": [t, v]}]``)."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [data]

    def wait_for(self, expr: str, timeout: float = 20.0, interval: float = 0.5) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns a non-empty vector; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                health = [(t["scrapeUrl"], t["health"], t.get("lastError", "")) for t in targets]
                raise TimeoutError(f"no series for {expr!r} after {timeout} s; targets: {health}")
            time.sleep(interval)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalPrometheus:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray-sd", default=RAY_SD_FILE, help=f"Ray's service-discovery file (default {RAY_SD_FILE})")
    p.add_argument("--replay", action="append", default=[], metavar="HOST:PORT",
                   help="replay service metrics endpoint; repeatable (default 127.0.0.1:9101)")
    p.add_argument("--port", type=int, default=9090, help="Prometheus web port on 127.0.0.1 (default 9090)")
    p.add_argument("--data-dir", default=None, help="TSDB directory (default: a temporary one)")
    args = p.parse_args(argv)
    exe = shutil.which("prometheus")
    if exe is None:
        print("promlocal: prometheus not found; install Debian's 'prometheus' package", file=sys.stderr)
        return 2
    config = render_config(args.ray_sd, args.replay or ["127.0.0.1:9101"])
    with tempfile.TemporaryDirectory(prefix="relaxrl-prom-") as tmp:
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(config)
        data = args.data_dir or str(Path(tmp) / "data")
        print(f"promlocal: Prometheus on http://127.0.0.1:{args.port} (Ctrl-C stops)", flush=True)
        try:
            return subprocess.call([exe, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
                                    f"--web.listen-address=127.0.0.1:{args.port}"])
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
