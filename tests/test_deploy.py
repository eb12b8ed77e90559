"""Deployment files: docker compose (validated by Debian's docker-compose, no engine needed),
Prometheus config (promtool), Grafana provisioning and dashboard, Ray cluster YAMLs (Ray's own
JSON schema), the Dockerfile and the helper scripts."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.metrics import METRICS, promql_name, spec_for_promql_name
from helpers import load_module

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SECRETS = {"REDIS_PASSWORD": "test-redis-pw", "RAY_AUTH_TOKEN": "ab" * 32, "GRAFANA_ADMIN_PASSWORD": "test-grafana-pw"}
SERVICES = {"redis", "replay", "ray-head", "ray-worker", "prometheus", "grafana"}


_load = load_module


def _needs(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not installed: Debian package '{package}' (scripts/sysdeps.sh installs it)")
    return path


def _compose(*files: str, env: dict[str, str] | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with only ``env`` as variables (an empty --env-file, so a
    developer's .env does not leak in)."""
    exe = _needs("docker-compose", "docker-compose")
    empty = tmp / "empty.env"
    empty.write_text("")
    args = [exe, "--env-file", str(empty)]
    for f in files:
        args += ["-f", str(ROOT / f)]
    base = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(args + ["config"], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    r = _compose("docker-compose.yml", env=SECRETS, tmp=tmp_path_factory.mktemp("compose"))
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def _published(service: dict[str, Any]) -> set[int]:
    out = set()
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.add(int(p["published"]))
        else:  # "127.0.0.1:9090:9090/tcp"
            out.add(int(str(p).split("/")[0].split(":")[-2]))
    return out


# ---- docker compose ----------------------------------------------------------------------------


def test_compose_file_validates_with_all_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    for missing in SECRETS:
        env = {k: v for k, v in SECRETS.items() if k != missing}
        r = _compose("docker-compose.yml", env=env, tmp=tmp_path)
        assert r.returncode != 0
        assert f"set {missing} in .env" in r.stderr


def test_only_prometheus_and_grafana_ports_are_published(compose: dict[str, Any]) -> None:
    published = {name: _published(s) for name, s in compose["services"].items()}
    assert published == {"redis": set(), "replay": set(), "ray-head": set(), "ray-worker": set(),
                         "prometheus": {9090}, "grafana": {3000}}


def test_redis_is_append_only_password_protected_and_persistent(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    assert "ports" not in redis
    assert any(v.startswith("redis-data:/data") for v in redis["volumes"])


def test_every_service_has_a_health_check_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, s in compose["services"].items():
        assert s.get("healthcheck", {}).get("test"), name
        assert s.get("restart") in ("unless-stopped", "on-failure", "always"), name


def test_named_volumes_for_redis_data_and_runs(compose: dict[str, Any]) -> None:
    assert {"redis-data", "runs"} <= set(compose["volumes"])
    assert any(v.startswith("runs:/runs") for v in compose["services"]["ray-head"]["volumes"])


def test_replay_and_ray_services_wire_to_redis_and_each_other(compose: dict[str, Any]) -> None:
    s = compose["services"]
    url = "redis://redis:6379/0"  # the password goes in RELAXRL_REDIS_PASSWORD, never in a URL
    replay_cmd = s["replay"]["command"]
    assert replay_cmd[:3] == ["relaxrl", "replay", "serve"]
    assert replay_cmd[replay_cmd.index("--redis-url") + 1] == url
    assert replay_cmd[replay_cmd.index("--metrics-port") + 1] == "9101"
    assert replay_cmd[replay_cmd.index("--metrics-host") + 1] == "0.0.0.0"
    head = s["ray-head"]
    assert head["environment"]["REDIS_URL"] == url
    assert head["environment"]["RELAXRL_REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert s["replay"]["environment"]["RELAXRL_REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert head["depends_on"]["redis"]["condition"] == "service_healthy"
    worker = s["ray-worker"]
    assert "--address=ray-head:6379" in worker["command"] and "--metrics-export-port=8080" in worker["command"]
    assert "container_name" not in worker  # `--scale ray-worker=N` needs generated names
    for name in ("ray-head", "ray-worker"):
        env = s[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"]
    head_script = (DEPLOY / "ray-head.sh").read_text()
    for flag in ("--head", "--metrics-export-port=8080", "--dashboard-host=0.0.0.0"):
        assert flag in head_script
    assert re.search(r"relaxrl train --address auto .*--redis-url \"\$REDIS_URL\"", head_script)
    # a restart resumes with the run's own config (train refuses --config with --resume)
    assert 'set -- --resume "$RUN_DIR"' in head_script and '--config "$CONFIG" --run-dir "$RUN_DIR"' in head_script


def test_ray_head_script_is_valid_sh() -> None:
    r = subprocess.run(["sh", "-n", str(DEPLOY / "ray-head.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(DEPLOY / "ray-head.sh", os.X_OK)


def test_prometheus_reads_the_ray_heads_service_discovery_file(compose: dict[str, Any]) -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    sd_file = Path(jobs["ray"]["file_sd_configs"][0]["files"][0])
    assert sd_file.name == "prom_metrics_service_discovery.json"
    # the same named volume is Ray's temp dir in the head and holds that file for Prometheus
    s = compose["services"]
    mount = f"ray-tmp:{sd_file.parent}"
    assert any(v.startswith(mount) for v in s["ray-head"]["volumes"])
    assert any(v.startswith(mount) and v.endswith(":ro") for v in s["prometheus"]["volumes"])
    assert jobs["relaxrl-replay"]["static_configs"][0]["targets"] == ["replay:9101"]


def test_gpu_override_reserves_one_gpu_for_the_head(tmp_path: Path) -> None:
    r = _compose("docker-compose.yml", "docker-compose.gpu.yml", env=SECRETS, tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    s = yaml.safe_load(r.stdout)["services"]
    devices = s["ray-head"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert s["ray-head"]["environment"]["RAY_HEAD_NUM_GPUS"] == "1"
    assert "deploy" not in s["ray-worker"]
    assert _published(s["ray-head"]) == set()


def test_env_example_lists_every_required_variable_and_env_is_ignored() -> None:
    compose_text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", compose_text))
    assert required == set(SECRETS)
    example = (ROOT / ".env.example").read_text()
    for var in required:
        assert re.search(rf"^{var}=$", example, re.M), var  # present, and empty: no secret committed
    r = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert r.returncode == 0, ".env must be in .gitignore"


def test_dockerfile_installs_relaxrl_with_constraints_from_existing_paths() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "python:3.11-slim" in text
    assert "pip install -c constraints.txt ." in text
    assert "download.pytorch.org/whl/cpu" in text
    for line in text.splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line.strip())
        if m:
            for src in m.group(1).split():
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


# ---- Prometheus -------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = _needs("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # the native rendering (deploy/promlocal.py) is valid too
    promlocal = _load(DEPLOY / "promlocal.py", "relaxrl_promlocal")
    sd = promlocal.write_sd_file(tmp_path / "sd.json", ["127.0.0.1:8080"])
    rendered = tmp_path / "prometheus.yml"
    rendered.write_text(promlocal.render_config(sd, ["127.0.0.1:9101"], "1s"))
    r = subprocess.run([promtool, "check", "config", str(rendered)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Grafana ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "relaxrl.json").read_text())


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return _load(DEPLOY / "grafana" / "make_dashboard.py", "relaxrl_make_dashboard").promql_expressions(dashboard)


def test_dashboard_json_is_generated_from_the_spec() -> None:
    r = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "make_dashboard.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_every_dashboard_query_names_only_spec_metrics(dashboard: dict[str, Any]) -> None:
    used = set()
    for expr in _exprs(dashboard):
        names = re.findall(r"\b(?:ray_)?relaxrl_[a-z0-9_]+\b", expr)
        assert names, f"query names no relaxrl metric: {expr}"
        for series in names:
            spec = spec_for_promql_name(series)
            assert spec is not None, f"{series} in {expr!r} is not a common/metrics.py metric (prefix rule: promql_name)"
            used.add(spec.name)
    assert used == set(METRICS), f"metrics without a panel: {set(METRICS) - used}"


def test_dashboard_has_the_issue_panels(dashboard: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}
    qv = panels["Q value vs batch reward"]
    assert [t["expr"] for t in qv["targets"]] == [f"avg({promql_name('relaxrl_q_value')})",
                                                  f"avg({promql_name('relaxrl_batch_reward')})"]
    expected = {
        "Actual move (Å)": "relaxrl_actual_move_angstrom",
        "Action scale: off (env.env_input_dim = 0, the shipped presets) unless the env gate is on":
            "relaxrl_action_scale",
        "a_back: share of the move taken back": "relaxrl_a_back_ratio",
        "Fmax and success": "relaxrl_success_ratio",
        "Replay size": "relaxrl_replay_size",
        "Replay insert and sample rates": "relaxrl_replay_samples_total",
        "Env steps/s and updates/s": "relaxrl_learner_updates_total",
    }
    for title, metric in expected.items():
        assert any(promql_name(metric) in t["expr"] for t in panels[title]["targets"]), title
        assert METRICS[metric].help in panels[title]["description"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_matches_compose_and_dashboard(compose: dict[str, Any], dashboard: dict[str, Any]) -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {ds["uid"]}
    provider = yaml.safe_load((prov / "dashboards" / "relaxrl.yml").read_text())["providers"][0]
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(v.endswith(f":{provider['options']['path']}:ro") and "deploy/grafana/dashboards" in v for v in mounts)
    assert any(v.endswith(":/etc/grafana/provisioning:ro") for v in mounts)


# ---- ray up -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["ray-cluster.yaml", "ray-cluster-local.yaml"])
def test_cluster_yaml_validates_against_rays_schema(path: str) -> None:
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((DEPLOY / path).read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(cfg))  # Ray's own fill-in of defaults accepts it too
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert sum("--metrics-export-port=8080" in c for c in starts) == 2
    setup = " ".join(cfg["head_setup_commands"] + cfg["worker_setup_commands"])
    assert setup.count("pip install -q -c constraints.txt .") == 2
    assert cfg["file_mounts"] == {"~/relaxrl": "."}


def test_cloud_cluster_has_a_gpu_head_and_cpu_workers() -> None:
    cfg = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceType"].startswith("c") for t in workers)


def test_local_cluster_uses_the_local_provider_with_placeholders() -> None:
    cfg = yaml.safe_load((DEPLOY / "ray-cluster-local.yaml").read_text())
    assert cfg["provider"]["type"] == "local"
    assert cfg["provider"]["head_ip"] and cfg["provider"]["worker_ips"]
    assert cfg["max_workers"] == len(cfg["provider"]["worker_ips"])


def test_cluster_train_script_explains_a_missing_checkout(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(DEPLOY / "cluster_train.py"), "--config", "configs/demo.toml"],
                       env={**os.environ, "RELAXRL_CHECKOUT": str(tmp_path / "nowhere")},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no relaxrl checkout" in r.stderr


def test_deploy_docs_cover_every_metric_and_command() -> None:
    doc = (ROOT / "docs" / "DEPLOY.md").read_text()
    for name in METRICS:
        assert f"`{name}" in doc, name
    for line in ("docker compose up", "--scale ray-worker=4", "docker-compose.gpu.yml", "ray up deploy/ray-cluster.yaml",
                 "ray submit deploy/ray-cluster.yaml", "ray exec deploy/ray-cluster.yaml", "ray down deploy/ray-cluster.yaml",
                 "http://localhost:3000", "http://localhost:9090"):
        assert line in doc, line


# ---- the compose topology as local processes -------------------------------------------------
# tests/test_topology_e2e.py runs it (deploy/native_topology.py): `relaxrl train` on Redis, a Ray
# head and a second node, the replay service, with Prometheus scraping both nodes through the
# head's discovery file and every dashboard metric exported by that run.


# ---- system dependencies ----------------------------------------------------------------------


def test_sysdeps_script_is_idempotent() -> None:
    script = ROOT / "scripts" / "sysdeps.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    if not all(shutil.which(c) for c in ("prometheus", "promtool", "docker-compose", "redis-server")):
        pytest.skip("system packages missing (prometheus, docker-compose, redis-server): run scripts/sysdeps.sh")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "present" in r.stdout and "installing" not in r.stdout


def test_dockerfile_copies_every_installed_package() -> None:
    """The image installs the project from copied folders: a package pyproject installs but the
    Dockerfile does not copy (common/ was once missed) gives an image that cannot import relaxrl."""
    import tomllib

    pyproject = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    missing = [p for p in packages if not re.search(rf"^COPY {p} \./{p}$", dockerfile, re.M)]
    assert not missing, f"deploy/Dockerfile does not COPY {missing}"
