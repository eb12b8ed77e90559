"""The docker-compose topology run natively, end to end (issue 6's deployment test).

deploy/native_topology.py starts what compose starts — Redis with a password and AOF, a Ray
head and a second Ray node with metrics ports and token auth, `relaxrl replay serve`, and a
real Prometheus reading the head's service-discovery file — and `relaxrl train --address
... --redis-url ...` trains configs/tiny.toml on it as a subprocess, like the `ray-head`
container does. Then Prometheus, through its HTTP API, answers for actual move, Q value,
reward and replay size, and every metric the Grafana dashboard queries was exported by this
run. The same run exports the replay metrics itself on `replay.metrics_port`, the way a
cluster head does without a separate replay service (docs/DEPLOY.md's `ray submit` line).

Gauges of Ray workers that have exited vanish from Ray's next export, so the series checked
after training are read with ``last_over_time(...[10m])``.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.config import load_config
from common.metrics import METRICS, promql_name, spec_for_promql_name
from helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TINY = ROOT / "configs" / "tiny.toml"
EPISODE_STEPS = 10
"""env.max_steps of the run (tiny.toml has 40), so that episodes end early; see the test."""


_load = load_module


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """Samples of a /metrics endpoint by series name; None while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def _exported(prom: Any) -> set[str]:
    """Every relaxrl series name Prometheus ingested (it keeps names of vanished series)."""
    return set(prom.api("label/__name__/values", **{"match[]": '{__name__=~"(ray_)?relaxrl_.+"}'}))


def test_cluster_preset_validates() -> None:
    """configs/cluster.toml: a real cluster's preset loads, and keeps to the design notes."""
    cfg = load_config(ROOT / "configs" / "cluster.toml")
    assert cfg.run.name == "cluster"
    assert cfg.learner.batch_size == 256
    assert cfg.actors.num_online + cfg.actors.num_expert >= 16
    for table in cfg.replay.tables:
        assert 1000 <= table.max_size <= 5000  # freshness: small systems want 1k-5k transitions, not 100k
        assert not table.rate_limiter.blocks or table.rate_limiter.min_size_to_sample >= cfg.learner.batch_size
    assert cfg.replay.metrics_port and cfg.run.metrics_port


def test_replay_metrics_server_serves_the_collector_and_closes(redis_server: Any) -> None:
    """The piece `relaxrl train` (replay.metrics_port) and `relaxrl replay serve` share."""
    from common.config import ReplayConfig
    from replay_service.client import ReplayClient
    from replay_service.errors import ReplayConfigError
    from replay_service.server import ReplayMetricsServer

    client = ReplayClient(redis_server.url, ReplayConfig(namespace="test-metrics-server"))
    client.create_tables()
    srv = ReplayMetricsServer(client, 0)
    try:
        samples = _scrape(srv.url)
        assert samples is not None and samples["relaxrl_replay_up"] == [({}, 1.0)]
        assert sorted(samples["relaxrl_replay_capacity"], key=str) == [  # one series per table of the list
            ({"table": t.name}, float(t.max_size)) for t in client.cfg.tables]
        with pytest.raises(ReplayConfigError, match="replay.metrics_port"):  # the port is taken: a clear error
            ReplayMetricsServer(client, srv.port)
    finally:
        srv.close()
    srv.close()  # idempotent
    assert _scrape(srv.url) is None


@pytest.mark.slow
def test_train_on_the_native_compose_topology_reaches_prometheus(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed: Debian package 'prometheus' (scripts/sysdeps.sh installs it)")
    nt = _load(DEPLOY / "native_topology.py", "relaxrl_native_topology")
    promlocal = _load(DEPLOY / "promlocal.py", "relaxrl_promlocal")
    make_dashboard = _load(DEPLOY / "grafana" / "make_dashboard.py", "relaxrl_make_dashboard")
    tiny = load_config(TINY)
    online = next(t for t in tiny.replay.tables if t.name == "online")
    assert online.rate_limiter.min_size_to_sample > EPISODE_STEPS * tiny.actors.envs_per_actor  # see env.max_steps below
    run_dir = tmp_path / "run"
    run_replay_port = promlocal.free_port()

    with nt.NativeTopology(replay_config=TINY) as topo:
        prom = topo.prometheus
        log = (tmp_path / "train.log").open("w")
        train = subprocess.Popen(_train_command(topo, run_dir, run_replay_port), cwd=tmp_path,
                                 env={**topo.env, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            # while training runs: the launcher's replay endpoint serves what the replay service serves
            run_replay = _scrape_while_filling(train, run_replay_port, timeout=180)
            assert run_replay, f"relaxrl train served no replay metrics on replay.metrics_port {run_replay_port}"
            assert {lab["table"] for lab, _ in run_replay["relaxrl_replay_size"]} == {"expert", "online"}
            assert run_replay["relaxrl_replay_up"] == [({}, 1.0)]
            assert all(spec_for_promql_name(n) is not None for n in run_replay if n.startswith("relaxrl_"))

            # ... and the actors on both Ray nodes are scraped through the head's discovery file
            nodes = "|".join(str(p) for p in topo.metrics_ports)
            steps = f'{promql_name("relaxrl_env_steps_total")}{{instance=~".*:({nodes})"}}'
            by_node = prom.wait_for(f"count(count by (instance) (last_over_time({steps}[10m]))) == 2", timeout=120)
            assert float(by_node[0]["value"][1]) == 2

            assert train.wait(timeout=240) == 0, (tmp_path / "train.log").read_text()[-3000:]
        finally:
            if train.poll() is None:
                train.kill()
                train.wait()
            log.close()
        assert "held-out success" in (tmp_path / "train.log").read_text()
        assert sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
        with pytest.raises(OSError):  # the run's replay endpoint closed with the run
            urllib.request.urlopen(f"http://127.0.0.1:{run_replay_port}/metrics", timeout=2)

        # the four series the issue names, from the learner (driver), the actors and the replay service
        updates = prom.wait_for(f'max(last_over_time({promql_name("relaxrl_learner_updates_total")}[10m]))', timeout=30)
        # the driver leaves Ray right after its last update, so the newest increments may miss the last export
        assert 0 < float(updates[0]["value"][1]) <= tiny.learner.max_updates
        for name in ("relaxrl_actual_move_angstrom", "relaxrl_q_value", "relaxrl_batch_reward"):
            result = prom.wait_for(f"last_over_time({promql_name(name)}[10m])", timeout=30)
            assert all(r["metric"]["job"] == "ray" for r in result), name
        q = prom.query(f'last_over_time({promql_name("relaxrl_q_value")}[10m])')
        assert q and all(math.isfinite(float(r["value"][1])) for r in q)
        size = prom.wait_for(f'max_over_time({promql_name("relaxrl_replay_size")}{{job="relaxrl-replay"}}[10m]) > 0',
                             timeout=30)
        assert {r["metric"]["table"] for r in size} == {"expert", "online"}

        _assert_every_dashboard_metric_was_exported(prom, make_dashboard)
    assert topo.tmp is None  # everything the topology started is stopped


def _train_command(topo: Any, run_dir: Path, run_replay_port: int) -> list[str]:
    """`relaxrl train` of configs/tiny.toml on the topology."""
    return [sys.executable, "-m", "relaxrl.cli", "train", "--address", topo.ray_address,
            "--redis-url", topo.redis_url, "--config", str(TINY), "--run-dir", str(run_dir), "--no-progress",
            # one CPU per actor on one-CPU nodes: the online actor and the expert actor land on different nodes
            "--set", "actors.num_cpus=1",
            # Fmax, success and force calls are recorded when an episode ends. With 10-step episodes
            # the online actor (2 envs) ends its first ones before its table holds min_size_to_sample
            # (32) transitions, so before the learner's first update: every dashboard metric exists.
            "--set", f"env.max_steps={EPISODE_STEPS}",
            # this run also serves the replay metrics itself (what a cluster head does without `replay serve`)
            "--set", f"replay.metrics_port={run_replay_port}"]


def _scrape_while_filling(train: subprocess.Popen, port: int, timeout: float
                          ) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """The run's replay endpoint, scraped until a table holds something (or the run ends, or ``timeout``)."""
    scraped = None
    deadline = time.monotonic() + timeout
    while train.poll() is None and time.monotonic() < deadline:
        scraped = _scrape(f"http://127.0.0.1:{port}/metrics")
        if scraped and any(v > 0 for _, v in scraped.get("relaxrl_replay_size", [])):
            break
        time.sleep(0.5)
    return scraped


def _assert_every_dashboard_metric_was_exported(prom: Any, make_dashboard: Any) -> None:
    """Every metric a dashboard query names was exported by the run Prometheus scraped."""
    exported = _exported(prom)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "relaxrl.json").read_text())
    # except the live evaluation's force-call ratio: it is defined (and exported) only once the actor solved
    # a sample structure BFGS solved too, which tiny's few updates do not promise
    undefined = {"relaxrl_eval_force_calls_vs_bfgs_ratio"}
    missing = {}
    for expr in make_dashboard.promql_expressions(dashboard):
        for series in re.findall(r"\b(?:ray_)?relaxrl_[a-z0-9_]+\b", expr):
            spec = spec_for_promql_name(series)
            assert spec is not None, series
            if series not in exported and spec.name not in undefined:
                missing[series] = expr
    assert not missing, f"dashboard queries metrics this run did not export: {missing}; exported: {sorted(exported)}"
    assert {spec_for_promql_name(s).name for s in exported if spec_for_promql_name(s)} | undefined == set(METRICS)
