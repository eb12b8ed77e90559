"""`relaxrl train` refuses bad input before it writes or starts anything (issue 14).

Each class of mistake has one test: contradicting flags, values a config alone shows to be wrong,
a run directory in use, a start that fails after the run directory was written, another run's
replay tables, a run's Redis password kept out of its files, a Ray address that is not Ray, a
local Ray on loopback only, Ctrl-C, and the progress line at 80 columns. Real Redis, real Ray.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from common.config import ReplayConfig, dump_config, load_config
from relaxrl.cli import main
from replay_service.client import ReplayClient
from replay_service.server import REDIS_PASSWORD_ENV, claim_namespace
from tests.test_reliability import _redis_with_password

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))


def snapshot(d: Path) -> dict[str, bytes] | None:
    """Every file under ``d`` with its bytes (None when ``d`` does not exist)."""
    if not d.exists():
        return None
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("relaxrl train: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def make_run(run_dir: Path, *overrides: str, replay_url: str = "") -> None:
    """A run directory as `relaxrl train` leaves it after its first checkpoint (config.toml + ckpt-00000000.pt)."""
    from learner.learner import Learner

    cfg = load_config(TINY, list(overrides))
    cfg = replace(cfg, replay=replace(cfg.replay, url=replay_url))
    run_dir.mkdir(parents=True)
    dump_config(cfg, run_dir / "config.toml")
    Learner(cfg, None, run_dir).checkpoint()


# ----------------------------------------------------------------------------- flags and config values


def test_resume_with_run_dir_or_config_is_refused_and_nothing_changes(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    before = snapshot(run)
    for extra, flag in ((["--run-dir", str(tmp_path / "other")], "--run-dir"), (["--config", TINY], "--config")):
        assert main(["train", "--resume", str(run), *extra, "--no-progress"]) == 2
        one_line_error(capsys, flag, "cannot be given with it")
    assert snapshot(run) == before and not (tmp_path / "other").exists()


@pytest.mark.parametrize("overrides, message", [
    (["env.max_steps=0"], "env.max_steps must be at least 1"),
    (["actors.num_online=0", "actors.num_expert=0"], "actors.num_online + num_expert must be at least 1"),
    (["learner.batch_size=0"], "learner.batch_size must be at least 1"),
    (["learner.actor_lr=-1e-3"], "learner.actor_lr must be a positive learning rate"),
    (["learner.critic_lr=nan"], "learner.critic_lr must be a finite number, got nan"),
    (["learner.gamma=nan"], "learner.gamma must be a finite number"),
    (["learner.tau=0"], "learner.tau must be"),
    (["learner.policy_delay=0"], "learner.policy_delay must be at least 1"),
    (["learner.max_updates=0", "learner.time_limit_s=0"], "training never ends"),
    (["learner.batch_size=5000"], "at most the replay tables' total max_size (2000)"),
    (["replay.connect_timeout=inf"], "replay.connect_timeout must be a finite number"),
    (["replay.tables.online.rate_limiter.min_size_to_sample=5000"], "can never hold"),  # the replay's own rules
    (["replay.min_size_to_sample=5000"], "can never hold"),  # the same through a key of the two-table form
    (["replay.tables.online.rate_limiter.error_buffer=8.0"], "error_buffer >= 18"),  # tiny's batch of 32
    (["replay.tables.online.share=0.5"], "the shares sum to 0.75"),
    (["replay.tables.offline.max_size=10"], "NAME one of expert, online"),
    (["env.fmax=-0.05"], "env.fmax must be a positive"),
    (["curriculum.heldout_fraction=1.0"], "curriculum.heldout_fraction must be"),
    # issue 27: settings that size a search have upper bounds; seeds are checked before Ray starts
    (["env.max_step=1000"], "env.max_step must be a positive bound in Å of at most 1"),
    (["network.radius=100"], "network.radius must be a positive cutoff in Å of at most 10"),
    (["network.max_neighbors=100000"], "network.max_neighbors must be 0..256"),
    (["expert.teacher_max_atoms=100000"], "expert.teacher_max_atoms must be 1..200"),
    (["env.saddle_check_atoms=100000"], "env.saddle_check_atoms must be the most free atoms"),
    (["curriculum.min_distance=50"], "curriculum.min_distance must be a positive distance in Å of at most 4"),
    (["run.seed=-1"], "run.seed must be an integer seed in 0..2147483647"),
    (["run.seed=12345678901234567890"], "run.seed must be an integer seed in 0..2147483647"),
])
def test_values_a_config_shows_wrong_stop_train_before_anything_starts(tmp_path, capsys, overrides, message):
    args = ["train", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--no-progress"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- the run directory


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding ``run_dir``'s lock, as a running `relaxrl train` does."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.lockf(f.fileno(), fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_dir / "train.lock")], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_run_dir_in_use_is_refused_before_anything_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, "learner.max_updates=77")
    holder = _hold_lock(run)
    try:
        before = snapshot(run)
        assert main(["train", "--config", TINY, "--run-dir", str(run), "--no-progress"]) == 2
        one_line_error(capsys, f"run directory {run} is in use by a running `relaxrl train`")
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        one_line_error(capsys, "is in use")
        assert snapshot(run) == before  # config.toml (which --resume reads) untouched
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_start_leaves_the_run_dir_as_it_was_and_reusable(tmp_path, capsys, existing):
    """The start fails after config.toml, the lock and the embedded Redis were written (a busy metrics port)."""
    run = tmp_path / "run"
    if existing:
        run.mkdir()
        (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["train", "--config", TINY, "--run-dir", str(run), "--set", f"replay.metrics_port={port}", "--no-progress"]
        for _ in range(2):  # the same command again: refused for the same reason, not by what the first left
            assert main(args) == 2
            one_line_error(capsys, f"replay metrics port 127.0.0.1:{port}")
            assert snapshot(run) == before


# ----------------------------------------------------------------------------- Redis: tables and password


@pytest.fixture
def password_redis(tmp_path):
    proc, port = _redis_with_password(tmp_path, "s3cret-pw")
    yield port
    proc.terminate()
    proc.wait(30)


def test_a_new_run_refuses_a_namespace_holding_another_runs_tables(tmp_path, capsys, monkeypatch, password_redis):
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "s3cret-pw")
    url = f"redis://127.0.0.1:{password_redis}/0"
    other = ReplayClient(f"redis://:s3cret-pw@127.0.0.1:{password_redis}/0", ReplayConfig(namespace="shared"))
    claim_namespace(other, "/runs/other-run", resume=False)
    other.create_tables()
    rc = main(["train", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--redis-url", url,
               "--set", "replay.namespace='shared'", "--no-progress"])
    assert rc == 2
    one_line_error(capsys, "namespace 'shared'", "/runs/other-run", "replay.namespace", "--resume /runs/other-run")
    assert not (tmp_path / "run").exists()
    assert other.sizes() == {"expert": 0, "online": 0}


def test_the_redis_password_stays_out_of_run_files_and_resume_asks_for_it_again(tmp_path, capsys, monkeypatch,
                                                                              password_redis):
    from learner.learner import Learner
    from relaxrl.cli import build_parser
    from relaxrl.launcher import plan_run

    url = f"redis://:s3cret-pw@127.0.0.1:{password_redis}/0"
    plan = plan_run(build_parser().parse_args(["train", "--config", TINY, "--run-dir", str(tmp_path / "a"),
                                               "--redis-url", url]))
    assert "--redis-url is visible" in capsys.readouterr().err  # a password on the command line: warned
    assert plan.redis_url == url and plan.cfg.replay.url == f"redis://:***@127.0.0.1:{password_redis}/0"
    # what is stored: config.toml and every checkpoint hold the URL without the password
    run = tmp_path / "run"
    make_run(run, replay_url=plan.cfg.replay.url)
    Learner(plan.cfg, None, run).checkpoint()
    for f in [run / "config.toml", *(run / "checkpoints").iterdir()]:
        assert b"s3cret-pw" not in f.read_bytes()
    # --resume names the server again (a URL only config.toml names gets no password: tests/test_security.py);
    # a trusted run's stored URL without the password: one line naming the variable and the flag; nothing written
    monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
    before = snapshot(run)
    bare = f"redis://127.0.0.1:{password_redis}/0"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    one_line_error(capsys, "replay.url = redis://:***@127.0.0.1", f"--redis-url {bare} again", "--trust-run-config")
    assert main(["train", "--resume", str(run), "--trust-run-config", "--no-progress"]) == 2
    one_line_error(capsys, "stored without its password", REDIS_PASSWORD_ENV, "--redis-password-file")
    assert snapshot(run) == before and not (run / "redis").exists()  # no empty embedded Redis either
    # with the URL and the password (file or environment variable) the run's own Redis is used, never an embedded one
    (tmp_path / "pw").write_text("s3cret-pw\n")
    args = build_parser().parse_args(["train", "--resume", str(run), "--redis-url", bare,
                                      "--redis-password-file", str(tmp_path / "pw")])
    plan = plan_run(args)
    assert plan.redis_url == url and plan.cfg.replay.url == f"redis://:***@127.0.0.1:{password_redis}/0"
    ReplayClient(plan.redis_url, plan.cfg.replay).create_tables()  # the password works on the real server
    monkeypatch.setenv(REDIS_PASSWORD_ENV, "s3cret-pw")
    assert plan_run(build_parser().parse_args(["train", "--resume", str(run), "--redis-url", bare])).redis_url == url


# ----------------------------------------------------------------------------- Ray


@pytest.mark.parametrize("server", ["http", "silent"])
def test_a_ray_address_that_is_not_ray_is_refused_within_seconds(tmp_path, capsys, server):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        if server == "http":
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        time.sleep(8)  # "silent" answers nothing
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        rc = main(["train", "--config", TINY, "--run-dir", str(tmp_path / "run"), "--address", f"127.0.0.1:{port}",
                   "--no-progress"])
        assert rc == 2 and time.monotonic() - t0 < 15
        one_line_error(capsys, f"--address 127.0.0.1:{port}", "not" if server == "http" else "did not answer",
                       "GCS address")
        assert not (tmp_path / "run").exists()
    finally:
        listener.close()


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only():
    import psutil
    import ray

    from relaxrl.ray_runtime import RayRuntime

    rt = RayRuntime(None, num_cpus=1)
    try:
        @ray.remote
        class Probe:
            def pid(self) -> int:
                return os.getpid()

        worker = ray.get(Probe.remote().pid.remote(), timeout=60)
        pids = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid(), worker}
        listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in pids]
        assert listening
        outside = [(c.laddr.ip, c.laddr.port) for c in listening
                   if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
        assert not outside, f"listening beyond loopback: {outside}"
    finally:
        rt.close()


def test_an_actor_loop_that_ends_while_its_process_lives_is_named_at_once():
    """An actor's loop that raised (its process alive, so Ray restarts nothing) or returned shows in ended_actors,
    naming the actor, its kind and its error; running loops do not. The launcher stops the run on it with a final
    checkpoint: the Al–Fe run of docs/RESULTS.md went on 21 minutes with its online loop ended, because the expert
    actor kept t_total growing and the stall watch follows t_total."""
    import ray

    from relaxrl.ray_runtime import RayRuntime

    rt = RayRuntime(None, num_cpus=1)
    try:
        @ray.remote
        class Loop:
            def run(self, fail: bool, seconds: float) -> int:
                time.sleep(seconds)
                if fail:
                    raise RuntimeError("insert into 'online' waited 60 s for the rate limiter")
                return 0

        loops = [Loop.remote() for _ in range(2)]
        rt.kinds = ["online", "expert"]
        rt.runs = [loops[0].run.remote(True, 0.0), loops[1].run.remote(False, 30.0)]
        deadline = time.monotonic() + 60
        while not rt.ended_actors() and time.monotonic() < deadline:
            time.sleep(0.1)
        ended = rt.ended_actors()
        assert len(ended) == 1 and ended[0].startswith("actor 0 (online): ")
        assert "waited 60 s for the rate limiter" in ended[0]
    finally:
        rt.runs, rt.kinds = [], []
        rt.close()


# ----------------------------------------------------------------------------- Ctrl-C and the display


def test_the_progress_line_drops_fields_instead_of_squeezing_the_bar():
    from relaxrl.launcher import _FIXED_WIDTH, _progress_line

    s = {"t_total": 123456, "episodes/online_success": 0.25, "actors/fmax": 1.234, "env_steps_per_s": 30.8,
         "curriculum/stage": 1}
    logs = {"charts/q_value": 0.554, "charts/batch_reward": -1.2}
    line = _progress_line(s, logs, 1500, 80 - _FIXED_WIDTH)
    assert line.startswith("t_total 123456") and len(line) <= 80 - _FIXED_WIDTH and "stage" not in line
    assert _progress_line(s, logs, 1500, 10) == ""  # nothing cut in the middle
    assert _progress_line(s, logs, 1500).endswith("stage 1")  # plain lines keep every field


def _gone(pids: list, within_s: float) -> list:
    """The processes of ``pids`` (psutil.Process) still running or unreaped (zombies) after ``within_s`` seconds."""
    import psutil

    deadline = time.monotonic() + within_s
    while True:
        left = []
        for p in pids:
            try:
                if p.is_running():
                    left.append(f"{p.pid} {p.status()} {' '.join(p.cmdline())[:80] or p.name()}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_checkpoints_and_exits_130(tmp_path, sig, status):
    """Ctrl-C and SIGTERM (what schedulers, systemd and `docker stop` send) alike: the update finishes, a final
    checkpoint, one "stopped:" line, exit 128 + the signal; no Ray stack or task-failure lines, and no process of
    the run (redis-server, Ray's GCS, raylet and agents, the actors) is left running or unreaped."""
    import psutil

    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "relaxrl.cli", "train", "--config", TINY, "--run-dir", str(run),
                          "--set", "learner.max_updates=100000", "--no-progress"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.5)
        assert (run / "metrics.jsonl").exists(), p.stderr.read() if p.poll() is not None else "no update in 300 s"
        family = psutil.Process(p.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in family) and any("raylet" in c.name() for c in family)
        p.send_signal(sig)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == status, err[-2000:]
    assert "stopped: final checkpoint" in err and "Traceback" not in err
    assert "Unhandled error" not in err and "ActorDiedError" not in err and "ray.kill" not in err
    assert "SIGTERM received" not in err and "(raylet) Task" not in err, err[-2000:]
    assert not _gone(family, within_s=5.0), f"left behind: {_gone(family, 0)}"
    from learner.checkpoint import list_checkpoints

    assert list_checkpoints(run)[-1].name != "ckpt-00000000.pt"


def test_unowned_tables_are_claimed_only_while_nothing_was_ever_inserted(password_redis):
    """`relaxrl replay serve` creates empty tables before the first run of a compose/cluster set-up:
    that run claims them; unowned tables that already hold experience are refused."""
    from replay_service.errors import ReplayConfigError
    from tests.test_replay_codec import make_transition

    url = f"redis://:s3cret-pw@127.0.0.1:{password_redis}/0"
    fresh = ReplayClient(url, ReplayConfig(namespace="served"))
    fresh.create_tables()  # what the replay service does at start
    claim_namespace(fresh, "/runs/first", resume=False)
    claim_namespace(fresh, "/runs/first", resume=True)  # its own tables on resume
    used = ReplayClient(url, ReplayConfig(namespace="used"))
    used.create_tables()
    used.insert("online", [make_transition(3, expert=False)])
    with pytest.raises(ReplayConfigError, match="namespace 'used'"):
        claim_namespace(used, "/runs/second", resume=False)
