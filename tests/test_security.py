"""Security properties, each checked against the real thing (issue 8, "Security").

* Nothing read from Redis or a checkpoint is unpickled: a live pickle exploit handed to the
  codec, stored in a replay table, or saved as a checkpoint is refused and never runs.
* A Redis that is neither on loopback nor a unix socket needs a password; the embedded Redis
  listens on 127.0.0.1 only.
* Ray's token authentication is never switched off; secrets come from ``.env``, which git ignores.
  (Ports: tests/test_deploy.py::test_only_prometheus_and_grafana_ports_are_published;
  secrets required by compose: tests/test_deploy.py::test_compose_refuses_to_start_without_secrets.)
"""
from __future__ import annotations

import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from common.config import load_config, to_dict
from learner.checkpoint import FORMAT, CheckpointError, load_checkpoint
from learner.policy import load_policy
from relaxrl.cli import main
from replay_service.client import REDIS_PASSWORD_ENV
from replay_service.codec import CodecError, decode
from replay_service.errors import ReplayConfigError
from replay_service.server import check_url_security
from tests.test_reliability import store_raw
from tests.test_replay_client import client_for, transitions

ROOT = Path(__file__).resolve().parents[1]


class Exploit:
    """Unpickling this creates the directory ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def live_pickle(marker: Path) -> bytes:
    """A pickle that runs code when loaded; checked to really work on a sibling marker."""
    probe = marker.with_name(marker.name + "-probe")
    pickle.loads(pickle.dumps(Exploit(probe)))
    assert probe.is_dir(), "the exploit must be live, or the tests below prove nothing"
    return pickle.dumps(Exploit(marker))


# ----------------------------------------------------------------------------- no unpickling


@pytest.mark.parametrize("prefix", [b"", b"RXRL\x01\x00"])
def test_codec_refuses_a_pickle_and_never_runs_it(tmp_path, prefix):
    marker = tmp_path / "pwned"
    payload = prefix + live_pickle(marker)
    with pytest.raises(CodecError):
        decode(payload)
    assert not marker.exists()


def test_a_pickle_stored_in_a_table_is_refused_on_sample(redis_server, tmp_path):
    marker = tmp_path / "pwned"
    c = client_for(redis_server)
    c.insert("online", transitions([0.0, 1.0]))
    store_raw(c, "online", 0, live_pickle(marker))
    try:
        info, _ = c.sample(4, 0.0)
    except CodecError as e:  # refused, naming the item
        assert "key 0" in str(e)
    else:  # or quarantined: never handed out
        assert 0 not in info.key.tolist()
    assert not marker.exists()
    assert c.items("online", [1])[0].reward == 1.0  # the other item is untouched


def _checkpoint_with(path: Path, obj) -> Path:
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    torch.save({"format": FORMAT, "config": to_dict(cfg), "actor": obj, "counters": {"updates": 1, "t_total": 0}}, path)
    return path


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    live_pickle(probe_dir / "x")  # the exploit class is live
    ckpt = _checkpoint_with(tmp_path / "ckpt-00000001.pt", Exploit(marker))
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_policy(ckpt)
    with pytest.raises(CheckpointError):
        load_checkpoint(ckpt)
    structure = tmp_path / "cu.xyz"
    structure.write_text("2\n\nCu 0 0 0\nCu 2.5 0 0\n")
    rc = main(["relax", str(structure), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out.xyz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


# ----------------------------------------------------------------------------- Redis exposure


@pytest.mark.parametrize("url, allowed", [
    ("redis://127.0.0.1:6379/0", True),
    ("redis://localhost:6379/0", True),
    ("redis://[::1]:6379/0", True),
    ("unix:///run/redis.sock", True),
    ("redis://:pw@10.0.0.5:6379/0", True),
    ("rediss://:pw@redis.example.org:6380/0", True),
    ("redis://10.0.0.5:6379/0", False),
    ("redis://redis:6379/0", False),  # the compose service name is not loopback
    ("rediss://user@redis.example.org:6380/0", False),
])
def test_a_remote_redis_without_a_password_is_refused(url, allowed):
    if allowed:
        check_url_security(url)
    else:
        with pytest.raises(ReplayConfigError, match="without a password"):
            check_url_security(url)


def test_train_and_replay_serve_refuse_a_remote_redis_without_a_password(tmp_path, capsys):
    """Both entry points refuse before touching anything (no Ray, no Redis connection)."""
    tiny = str(ROOT / "configs" / "tiny.toml")
    rc = main(["train", "--config", tiny, "--run-dir", str(tmp_path / "run"), "--redis-url", "redis://10.0.0.5:6379/0",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "without a password" in err and err.count("\n") == 1
    p = subprocess.run([sys.executable, "-m", "relaxrl.cli", "replay", "serve", "--config", tiny,
                        "--redis-url", "redis://10.0.0.5:6379/0", "--metrics-port", "0"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2 and "without a password" in p.stderr and "Traceback" not in p.stderr


def test_replay_serve_warns_about_a_password_in_the_url_as_train_does(tmp_path):
    """A password in --redis-url sits in `ps` for every user: `replay serve` says so (issue 27), as `train` does,
    and its errors give the README's advice."""
    tiny = str(ROOT / "configs" / "tiny.toml")
    p = subprocess.run([sys.executable, "-m", "relaxrl.cli", "replay", "serve", "--config", tiny,
                        "--redis-url", "redis://:pw-in-url@127.0.0.1:1/0", "--set", "replay.connect_timeout=0.5",
                        "--metrics-port", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 2 and "Traceback" not in p.stderr, p.stderr
    assert lines[0] == ("relaxrl replay serve: warning: the password in --redis-url is visible to every user of this "
                        "machine (ps, /proc); set RELAXRL_REDIS_PASSWORD or --redis-password-file FILE and give the URL "
                        "without it")
    assert lines[1].startswith("relaxrl replay: error: cannot reach Redis") and "pw-in-url" not in p.stderr
    with pytest.raises(ReplayConfigError, match="RELAXRL_REDIS_PASSWORD environment variable or --redis-password-file"):
        check_url_security("redis://10.0.0.5:6379/0")


def _non_loopback_ipv4() -> list[str]:
    import psutil

    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def test_the_embedded_redis_listens_on_loopback_only(redis_server):
    import redis

    r = redis.Redis(host="127.0.0.1", port=redis_server.port)
    assert r.config_get("bind")["bind"] == "127.0.0.1"
    assert r.config_get("protected-mode")["protected-mode"] == "yes"
    assert r.config_get("requirepass")["requirepass"] == ""  # no password is fine only because of the bind
    for ip in _non_loopback_ipv4():  # this host's other addresses do not reach it
        with pytest.raises(OSError):
            socket.create_connection((ip, redis_server.port), timeout=2).close()


# ----------------------------------------------------------------------------- Ray auth and secrets


CODE_SUFFIXES = {".py", ".sh", ".yml", ".yaml", ".toml", ".json", ".cfg", ".ini"}


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()]


def test_ray_token_authentication_is_never_switched_off():
    """No tracked file sets RAY_AUTH_MODE to anything but 'token'; compose and the native topology set 'token'."""
    setting = re.compile(r"RAY_AUTH_MODE['\"]?\s*[:=,]\s*['\"]?([A-Za-z_]+)")
    found: dict[str, set[str]] = {}
    for f in _tracked_files():
        if not (f.suffix in CODE_SUFFIXES or f.name in {"Dockerfile", "Makefile", ".env.example"}):
            continue
        if f.name == Path(__file__).name:
            continue
        text = f.read_text()
        for m in setting.finditer(text):
            found.setdefault(str(f.relative_to(ROOT)), set()).add(m.group(1))
    assert found.get("docker-compose.yml") == {"token"}
    assert all(values == {"token"} for values in found.values()), found
    for wiring in ("launcher.py", "ray_runtime.py"):  # the launcher leaves Ray's authentication as the cluster sets it
        assert "RAY_AUTH_MODE" not in (ROOT / "relaxrl" / wiring).read_text()


def test_no_secret_is_committed():
    tracked = {str(f.relative_to(ROOT)) for f in _tracked_files()}
    assert ".env" not in tracked and ".env.example" in tracked
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    # every Redis password and Ray token in compose comes from a ${VARIABLE}
    compose = (ROOT / "docker-compose.yml").read_text()
    for m in re.finditer(r"redis://:([^@\s]+)@", compose):
        assert m.group(1).startswith("${"), m.group(0)
    for m in re.finditer(r"^\s*(RAY_AUTH_TOKEN|REDISCLI_AUTH):\s*(\S+)", compose, re.M):
        assert m.group(2).startswith("${"), m.group(0)
    for m in re.finditer(r"--requirepass\s*\n?\s*-?\s*(\S+)", compose):
        assert m.group(1).startswith("${"), m.group(0)
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.match(r"^[A-Z_]*(PASSWORD|TOKEN)=", line):
            assert line.endswith("="), f".env.example must not carry a value: {line}"



# ----------------------------------------------------------------------------- no code from data (issue 27)


def _checkpoint_naming(run_dir: Path, calculator: str, kwargs: dict) -> Path:
    """A complete, loadable checkpoint whose config names ``calculator`` with ``kwargs`` (what an attacker sends)."""
    from dataclasses import replace

    from learner.policy import Policy, save_policy

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    cfg = replace(cfg, env=replace(cfg.env, calculator=calculator, calculator_kwargs=kwargs))
    return save_policy(run_dir, cfg, Policy(cfg).actor)


@pytest.mark.parametrize("command", ["relax", "eval"])
def test_a_checkpoint_naming_os_system_runs_nothing(tmp_path, capsys, command):
    """`env.calculator = "os:system"` in a checkpoint: nothing runs, one line that says how to name it yourself."""
    marker = tmp_path / "pwned.txt"
    probe = tmp_path / "probe.txt"
    os.system(f"touch {probe}")  # the command is live: it would create the marker if anything ran it
    assert probe.exists()
    _checkpoint_naming(tmp_path / "evil", "os:system", {"command": f"touch {marker}"})
    argv = ([str(tmp_path / "missing.cif"), "--out", str(tmp_path / "out.cif")] if command == "relax"
            else ["--optimizers", "bfgs", "--structures", str(tmp_path), "--out", str(tmp_path / "ev")])
    rc = main([command, *argv, "--checkpoint", str(tmp_path / "evil")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "names calculator 'os:system'" in err and "--calculator os:system --calculator-kwargs" in err, err
    assert "--trust-checkpoint-calculator" in err
    assert not marker.exists()


def test_a_checkpoint_naming_a_module_never_imports_it_unless_trusted(tmp_path, capsys, monkeypatch):
    """A module whose import writes a file: refused (the file is not written, the module not imported) until the
    user names it with --calculator or passes --trust-checkpoint-calculator; then it runs, which shows the test
    could fail."""
    from ase.io import write

    marker = _probe_module(tmp_path, monkeypatch, "relaxrl_probe_calc", "from ase.calculators.emt import EMT as Calc\n")
    ckpt = _checkpoint_naming(tmp_path / "run", "relaxrl_probe_calc:Calc", {})
    structure = tmp_path / "cu.xyz"
    write(structure, _cu_dimer())
    base = ["relax", str(structure), "--checkpoint", str(ckpt), "--steps", "2", "--out", str(tmp_path / "out.xyz")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names calculator 'relaxrl_probe_calc:Calc'" in err, err
    assert not marker.exists() and "relaxrl_probe_calc" not in sys.modules
    assert main([*base, "--trust-checkpoint-calculator", "--hybrid", "1"]) == 0
    assert marker.exists()


def _probe_module(tmp_path, monkeypatch, module: str, body: str):
    """A module ``module`` on sys.path whose import writes ``tmp_path/imported.txt`` (returned) before ``body``."""
    marker = tmp_path / "imported.txt"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / f"{module}.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n{body}")
    monkeypatch.syspath_prepend(str(mods))
    return marker


def _cu_dimer():
    from ase import Atoms

    return Atoms("Cu2", positions=[[0, 0, 0], [2.4, 0, 0]])


@pytest.mark.parametrize("name, message", [
    ("collections:OrderedDict", "is the class collections.OrderedDict, not an ASE calculator class"),
    ("time:time", "built a builtins.float, not an ASE calculator"),
    ("math:pi", "is a builtins.float, which cannot be called"),
])
def test_what_a_module_name_builds_must_be_an_ase_calculator(tmp_path, capsys, name, message):
    from ase.io import write

    from learner.policy import Policy, save_policy

    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    ckpt = save_policy(tmp_path / "run", cfg, Policy(cfg).actor)
    structure = tmp_path / "cu.xyz"
    write(structure, _cu_dimer())
    rc = main(["relax", str(structure), "--checkpoint", str(ckpt), "--calculator", name, "--out",
               str(tmp_path / "out.xyz")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out.xyz").exists()


def test_eval_never_imports_a_checkpoints_calculator_unless_trusted(tmp_path, capsys, monkeypatch):
    """eval loads the held-out split with the calculator it resolved (here the user's --calculator emt), never
    with the one the checkpoint names; --trust-checkpoint-calculator lets it import that one; a --config file is
    the user's own, so its module:Class is used."""
    from ase.io import write

    marker = _probe_module(tmp_path, monkeypatch, "relaxrl_probe_calc2", "from ase.calculators.emt import EMT as Calc\n")
    ckpt = _checkpoint_naming(tmp_path / "run", "relaxrl_probe_calc2:Calc", {})
    base = ["eval", "--checkpoint", str(ckpt), "--optimizers", "bfgs", "--limit", "1", "--no-progress"]
    assert main([*base, "--calculator", "emt", "--out", str(tmp_path / "ev1")]) == 0
    assert not marker.exists() and "relaxrl_probe_calc2" not in sys.modules
    assert main([*base, "--out", str(tmp_path / "ev2")]) == 2
    assert "names calculator 'relaxrl_probe_calc2:Calc'" in capsys.readouterr().err and not marker.exists()
    assert main([*base, "--trust-checkpoint-calculator", "--out", str(tmp_path / "ev3")]) == 0
    assert marker.exists()
    # the user's own config file may name any calculator
    structures = tmp_path / "structures"
    structures.mkdir()
    write(structures / "ar.xyz", _cu_dimer())
    config = tmp_path / "lj.toml"
    config.write_text('[env]\ncalculator = "ase.calculators.lj:LennardJones"\n'
                      "calculator_kwargs = { sigma = 2.3, epsilon = 0.1, rc = 6.0 }\n")
    assert main(["eval", "--config", str(config), "--optimizers", "bfgs", "--structures", str(structures),
                 "--no-progress", "--out", str(tmp_path / "ev4")]) == 0


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_structure_file_never_makes_relaxrl_import_a_module(tmp_path, capsys, monkeypatch, suffix):
    """pymatgen's JSON/YAML structures decode site properties with monty, which imports any '@module' they name:
    such a file (data someone sends) is refused, the module never imported; the same structure as a CIF is read."""
    from pymatgen.core import Lattice, Structure

    from learner.policy import Policy, save_policy

    module = f"relaxrl_probe_site_{suffix[1:]}"  # one per case: nothing cached from the other
    marker = _probe_module(tmp_path, monkeypatch, module, "class Thing:\n    pass\n")
    s = Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    d = s.as_dict()
    d["sites"][0]["properties"] = {"x": {"@module": module, "@class": "Thing"}}
    probe = tmp_path / "probe.json"
    probe.write_text(__import__("json").dumps(d))
    Structure.from_file(str(probe))  # pymatgen itself imports it: the file is live
    assert marker.exists()
    marker.unlink()
    sys.modules.pop(module, None)
    src = tmp_path / f"cu{suffix}"
    if suffix == ".json":
        src.write_text(probe.read_text())
    else:
        import yaml

        src.write_text(yaml.safe_dump(d))
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    ckpt = save_policy(tmp_path / "run", cfg, Policy(cfg).actor)
    rc = main(["relax", str(src), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out.cif")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "which names Python classes that reading it would import" in err, err
    assert not marker.exists() and module not in sys.modules


def test_resume_never_imports_a_calculator_the_runs_config_toml_names_unless_told(tmp_path, capsys):
    """A run directory someone sends is data too: --resume refuses the module:Class its config.toml names (one line,
    nothing started or written) unless `--set env.calculator=...` names it again or the user trusts the run."""
    import argparse

    from common.config import dump_config
    from learner.learner import Learner
    from relaxrl.launcher import plan_run

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(ROOT / "configs" / "tiny.toml", ['env.calculator="relaxrl_probe_never:Calc"',
                                                      'env.calculator_kwargs={ command = "id" }', 'run.id="abc123"'])
    dump_config(cfg, run / "config.toml")
    Learner(cfg, None, run).checkpoint()
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume " + str(run) + ": its config.toml names calculator" in err, err
    assert "--set env.calculator=\"relaxrl_probe_never:Calc\" --set 'env.calculator_kwargs={\"command\" = \"id\"}'" in err
    assert "relaxrl_probe_never" not in sys.modules and sorted(p.name for p in run.rglob("*")) == before

    def args(*overrides, trust=False, trust_run=False):
        return argparse.Namespace(config=None, overrides=list(overrides), run_dir=None, resume=str(run), address=None,
                                  redis_url=None, redis_password_file=None, trust_checkpoint_calculator=trust,
                                  trust_run_config=trust_run)

    assert plan_run(args(trust=True)).cfg.env.calculator == "relaxrl_probe_never:Calc"
    assert plan_run(args(trust_run=True)).cfg.env.calculator == "relaxrl_probe_never:Calc"  # trusts all of config.toml
    named = args('env.calculator="relaxrl_probe_never:Calc"', 'env.calculator_kwargs={ command = "id" }')
    assert plan_run(named).cfg.env.calculator_kwargs == {"command": "id"}
    assert plan_run(args('env.calculator="emt"', "env.calculator_kwargs={}")).cfg.env.calculator == "emt"


@contextmanager
def watched_listener():
    """A TCP listener on 127.0.0.1 that accepts every connection and keeps what it is sent first: (port, received).
    It never answers, so nothing can go on talking to it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.05)
    received: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:  # the timeout, or the socket closed
                continue
            conn.settimeout(2.0)
            try:
                received.append(conn.recv(65536))
            except OSError:
                received.append(b"")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1], received
    finally:
        stop.set()
        t.join(5)
        srv.close()


@contextmanager
def watched_fifo(path: Path, line: bytes):
    """A FIFO at ``path`` that records every open for reading (a list that grows) and gives such a reader ``line``.

    Opening a FIFO for reading blocks until a writer comes: a watcher tries to open the write end without blocking
    every few ms, which succeeds only while someone holds the read end, so a read is seen and never hangs the test."""
    os.mkfifo(path)
    opened: list[float] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody holds it open for reading
                time.sleep(0.005)
                continue
            opened.append(time.monotonic())
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield opened
    finally:
        stop.set()
        t.join(5)


def test_resume_never_sends_a_password_where_only_the_runs_config_toml_says(tmp_path, capsys, monkeypatch):
    """A run directory someone sends may name any Redis and any password file in its config.toml: --resume connects
    nowhere and reads nothing it names (one line, exit 2, nothing written) unless the user names them again or
    passes --trust-run-config. Both detectors are real: a listening socket that sees any connection, and a FIFO
    that sees any open; trusting the run shows them catch what the refusal prevents."""
    from tests.test_train_cli import make_run, one_line_error, snapshot

    monkeypatch.setenv(REDIS_PASSWORD_ENV, "my-own-password")
    run = tmp_path / "run"
    fifo = tmp_path / "password-file"
    with watched_listener() as (port, received), watched_fifo(fifo, b"first-line-of-your-file\n") as opened:
        theirs = f"redis://127.0.0.1:{port}/0"
        make_run(run, f'replay.password_file="{fifo}"', replay_url=theirs)
        before = snapshot(run)
        for extra, needles in (
                ([], [f"replay.url = {theirs} and replay.password_file = {fifo}",
                      f"give --redis-url {theirs} --redis-password-file {fifo} again", "--trust-run-config"]),
                (["--redis-url", theirs], [f"names replay.password_file = {fifo}", f"--redis-password-file {fifo}",
                                          "--set replay.password_file=\"\""]),
                (["--redis-password-file", str(fifo)], [f"names replay.url = {theirs};"]),
                (["--trust-checkpoint-calculator"], ["replay.url", "--trust-run-config"])):
            assert main(["train", "--resume", str(run), "--no-progress", *extra]) == 2
            one_line_error(capsys, f"--resume {run}: its config.toml names", *needles)
        time.sleep(0.1)  # the detectors poll every few ms
        assert received == [] and opened == [] and snapshot(run) == before
        # what the refusal prevents, with the user's consent: the file is read and its first line goes to their server
        assert main(["train", "--resume", str(run), "--no-progress", "--trust-run-config",
                     "--set", "replay.connect_timeout=0.5"]) == 2
        capsys.readouterr()
        assert opened and any(b"first-line-of-your-file" in r for r in received), received


def test_resume_on_a_redis_named_again_works_and_the_embedded_one_needs_nothing(tmp_path, capsys, redis_server):
    """The ways to resume a run on an external Redis: --redis-url again, or --set replay.url; the plan connects to
    the real server. A local run (embedded Redis in the run directory) resumes with no flag, as before."""
    from relaxrl.cli import build_parser
    from relaxrl.launcher import plan_run
    from replay_service.client import ReplayClient
    from tests.test_train_cli import make_run

    run = tmp_path / "run"
    make_run(run, "replay.namespace='resume-named-again'", replay_url=redis_server.url)
    for named in (["--redis-url", redis_server.url], ["--set", f"replay.url='{redis_server.url}'"]):
        plan = plan_run(build_parser().parse_args(["train", "--resume", str(run), *named]))
        assert plan.redis_url == redis_server.url
        client = ReplayClient(plan.redis_url, plan.cfg.replay)
        client.create_tables()
        assert set(client.sizes()) == {"expert", "online"}
    local = tmp_path / "local"
    make_run(local)
    plan = plan_run(build_parser().parse_args(["train", "--resume", str(local)]))
    assert plan.redis_url is None and plan.cfg.replay.url == ""


@pytest.mark.parametrize("flag", ["--trust-checkpoint-calculator", "--trust-run-config"])
def test_a_trust_flag_without_resume_is_refused(tmp_path, capsys, flag):
    """A new run reads only the user's --config and --set: a flag that trusts a run's files has nothing to act on."""
    run = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs" / "tiny.toml"), "--run-dir", str(run), flag,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} applies to --resume RUN_DIR" in err, err
    assert not run.exists()


def test_eval_refuses_trust_with_no_checkpoint_calculator_to_trust(tmp_path, capsys):
    """eval's --trust-checkpoint-calculator acts on a --checkpoint's calculator only: without --checkpoint, or with
    --config (whose calculator is used), it would do nothing, so it is one line before the work."""
    ckpt = _checkpoint_naming(tmp_path / "run", "emt", {})
    base = ["eval", "--optimizers", "bfgs", "--limit", "1", "--no-progress", "--trust-checkpoint-calculator"]
    for extra, needle in (([], "without --checkpoint there is none"),
                          (["--checkpoint", str(ckpt), "--config", str(ROOT / "configs" / "tiny.toml")],
                           "with --config the calculator is your config's")):
        assert main([*base, *extra, "--out", str(tmp_path / "ev")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--trust-checkpoint-calculator applies to the calculator a --checkpoint" \
            in err and needle in err, err
        assert not (tmp_path / "ev").exists()
    assert main([*base, "--checkpoint", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
