"""`relaxrl train`: wire replay, actors and learner on Ray, show progress, leave a complete run directory.

:class:`Run` wires one run in start order (``Run._wire``): the replay (embedded Redis or a
URL), Ray (``relaxrl.ray_runtime``: the coordinator and the actor processes), and the
learner, which runs here, in the driver process, and publishes weights through the
coordinator. :func:`train` drives the learner, then plots and evaluates.

:func:`train_command` first checks everything it can without writing or starting anything
(:func:`plan_run`: config, flags, run directory, Redis URL and password, replay rules, Ray
address), then takes the run directory's lock, then writes; a new run whose start fails
removes what it wrote (:func:`_run_dir_for`).

Run directory::

    config.toml          resolved configuration (a resume reads it back); replay.url without its password
    train.lock           held by the `relaxrl train` running on this directory (a second one is refused)
    checkpoints/         ckpt-<updates>.pt, the newest few
    metrics.jsonl        one row every learner.log_every updates, x-axis t_total
    plots/*.png          actual move, Q vs reward, action scale, a_back, Fmax/success, losses, replay sizes
    eval.json, eval.md   `relaxrl eval`'s report: trained vs untrained policy (and BFGS) on held-out structures
    plots/eval_*.png     its force-call and Fmax plots
    redis/               the embedded Redis (append-only file) when no --redis-url is given
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import tomli_w
import tomllib
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.calculators import TRUST_FLAG, refuse_untrusted
from actors.curriculum import Curriculum, load_structures
from actors.ray_metrics import RayMetrics
from common.config import RunConfig, dump_config, load_config, parse_override
from common.errors import RelaxRLError, Terminated
from learner.checkpoint import list_checkpoints, load_checkpoint
from learner.learner import Learner, truncate_metrics
from relaxrl.after_training import after_training_line, evaluate_after_training
from relaxrl.cli import DEFAULT_CONFIG
from relaxrl.live_eval import LiveEval, progress_field
from relaxrl.ray_runtime import RayRuntime, check_ray_address
from relaxrl.training_report import LIVE_EVAL_FILE, plot_run
from replay_service.client import REDIS_PASSWORD_ENV, ReplayClient
from replay_service.server import (
    ReplayMetricsServer,
    check_url_security,
    claim_namespace,
    resolve_redis_url,
    start_embedded,
    url_without_password,
    warn_password_in_url,
)

log = logging.getLogger("relaxrl.train")


@dataclass(frozen=True)
class RunPlan:
    """What one `relaxrl train` will do, decided and checked before anything is written or started."""

    cfg: RunConfig
    """The configuration as stored in config.toml and in every checkpoint: replay.url without its password."""
    run_dir: Path
    resume: bool
    address: str | None
    redis_url: str | None
    """The Redis URL to connect with (password included); None = the embedded Redis in run_dir/redis."""


def plan_run(args: argparse.Namespace) -> RunPlan:
    """Every check of `relaxrl train`'s input that needs neither the run's lock nor a started service.

    Nothing is written here: the config (each section validates itself when built), the flags that
    contradict each other, the run directory, the Redis URL and password, the replay settings and
    the Ray address are all checked first, so a refused command leaves everything as it was.
    """
    overridden = {parse_override(text)[:2] for text in args.overrides}
    if ("run", "id") in overridden:
        raise RelaxRLError("--set run.id: a run's identity is given by `relaxrl train` when it creates the run "
                           "directory and kept for its resumes; remove the override")
    cfg, run_dir = _resume_plan(args, overridden) if args.resume else _new_plan(args)
    password_file = getattr(args, "redis_password_file", None) or cfg.replay.password_file
    given_url = args.redis_url or cfg.replay.url
    warn_password_in_url(args.redis_url, "train")
    url = resolve_redis_url(given_url, password_file) if given_url else None
    if url:
        check_url_security(url)
    stored = replace(cfg, replay=replace(cfg.replay, url=url_without_password(url or ""),
                                         password_file=str(password_file or "")))
    if args.address:
        check_ray_address(args.address)
    return RunPlan(stored, run_dir, bool(args.resume), args.address, url)


def _resume_plan(args: argparse.Namespace, overridden: set[tuple[str, str]]) -> tuple[RunConfig, Path]:
    """``--resume RUN_DIR``: its config.toml with the ``--set`` overrides, checked as data someone may have sent
    (a calculator or Redis it names is used only when built in, named again or trusted); nothing written."""
    trust_run = getattr(args, "trust_run_config", False)
    given = [flag for flag, v in (("--run-dir", args.run_dir), ("--config", args.config)) if v is not None]
    if given:
        raise RelaxRLError(f"--resume {args.resume} continues that run in its own directory with its own "
                           f"config.toml, so {' and '.join(given)} cannot be given with it; change a setting "
                           "with --set section.key=value, or start a new run without --resume")
    run_dir = Path(args.resume)
    if not (run_dir / "config.toml").is_file():
        raise RelaxRLError(f"--resume {run_dir}: no config.toml there; pass the directory of an earlier `relaxrl train` run")
    _refuse_if_in_use(run_dir)
    if not list_checkpoints(run_dir):
        raise RelaxRLError(f"--resume {run_dir}: the run holds no checkpoint to continue from; start it anew "
                           f"with --config FILE --run-dir {run_dir}")
    load_checkpoint(list_checkpoints(run_dir)[-1])  # damaged, or another run's: refused before anything starts
    cfg = load_config(run_dir / "config.toml", args.overrides)
    # the run's config.toml is data: a calculator it names is imported only if built in, named again or trusted
    refuse_untrusted(cfg.env.calculator, dict(cfg.env.calculator_kwargs), name_given=("env", "calculator") in overridden,
                     kwargs_given=("env", "calculator_kwargs") in overridden,
                     source=f"--resume {run_dir}: its config.toml", option="env.calculator",
                     trust=trust_run or getattr(args, "trust_checkpoint_calculator", False))
    # and where the Redis password goes: a server or password file only the run's config.toml names is refused
    _refuse_stored_redis(cfg, run_dir, redis_url=args.redis_url or "", trust=trust_run,
                         url_given=bool(args.redis_url) or ("replay", "url") in overridden,
                         file_given=bool(getattr(args, "redis_password_file", None))
                         or ("replay", "password_file") in overridden)
    if not cfg.run.id:  # a run of an earlier version: it gets its identity now (written into config.toml)
        cfg = replace(cfg, run=replace(cfg.run, id=new_run_id()))
    return cfg, run_dir


def _new_plan(args: argparse.Namespace) -> tuple[RunConfig, Path]:
    """A new run: the user's --config with its ``--set`` overrides, a fresh run id and a run directory that holds
    no checkpoint yet; nothing written."""
    trusting = [flag for flag, on in ((TRUST_FLAG, getattr(args, "trust_checkpoint_calculator", False)),
                                      (TRUST_RUN_FLAG, getattr(args, "trust_run_config", False))) if on]
    if trusting:  # a new run's --config is the user's own: nothing of it needs trusting
        raise RelaxRLError(f"{' and '.join(trusting)} applies to --resume RUN_DIR (what that run's config.toml "
                           "names); a new run reads only your --config and --set, so remove it")
    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    cfg = replace(cfg, run=replace(cfg.run, id=new_run_id()))  # every new run its own, whatever the file says
    run_dir = Path(args.run_dir or cfg.run.run_dir or f"runs/{cfg.run.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if run_dir.exists() and not run_dir.is_dir():
        raise RelaxRLError(f"--run-dir {run_dir} is a file; give a directory")
    _refuse_if_in_use(run_dir)
    if list_checkpoints(run_dir):
        raise RelaxRLError(f"run directory {run_dir} already holds checkpoints; use --resume {run_dir} to continue "
                           "it or choose another --run-dir")
    return cfg, run_dir


TRUST_RUN_FLAG = "--trust-run-config"
"""The flag with which the user lets a resume do what the run's config.toml says: connect to the Redis its
``replay.url`` names, read its ``replay.password_file`` and import the calculator it names."""


def _refuse_stored_redis(cfg: RunConfig, run_dir: Path, *, redis_url: str, url_given: bool, file_given: bool,
                         trust: bool) -> None:
    """Raise :class:`RelaxRLError` when a resume would connect to a Redis, or read a password file, that only the
    run's config.toml names (a run directory someone sent could send the password to a host of their choosing).

    ``redis_url``: ``--redis-url``; ``url_given`` / ``file_given``: the user named the URL / the password file on
    the command line (the flags or ``--set replay.url`` / ``replay.password_file``). The embedded Redis (no URL)
    needs nothing: it is started in the run directory, on loopback, without a password.
    """
    url, password_file = cfg.replay.url, cfg.replay.password_file
    stored, flags = [], []
    if url and not url_given:
        shown = url_without_password(url)
        stored.append(f"replay.url = {shown}")
        flags.append(f"--redis-url {shown.replace('://:***@', '://').replace(':***@', '@')}")
    if password_file and (redis_url or url) and not file_given:
        stored.append(f"replay.password_file = {password_file}")
        flags.append(f"--redis-password-file {password_file}")
    if trust or not stored:
        return
    env = (f" (or, for {REDIS_PASSWORD_ENV}, --set replay.password_file=\"\")" if len(flags) == 1
           and flags[0].startswith("--redis-password-file") else "")
    raise RelaxRLError(
        f"--resume {run_dir}: its config.toml names {' and '.join(stored)}; relaxrl connects to no Redis and reads "
        "no password file that only a run directory names, so your password never goes where someone else chose: "
        f"if the run is yours, give {' '.join(flags)} again{env}, or add {TRUST_RUN_FLAG}")


_LOCK_NAME = "train.lock"


def new_run_id() -> str:
    """A fresh run identity (``run.id``): 12 random hex digits."""
    return uuid.uuid4().hex[:12]


def _store_run_id(config_toml: Path, run_id: str) -> None:
    """Write ``run.id`` into a resumed run's config.toml that has none (only that key changes; atomically)."""
    data = tomllib.loads(config_toml.read_text())
    if data.get("run", {}).get("id"):
        return
    data.setdefault("run", {})["id"] = run_id
    tmp = config_toml.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(data))
    os.replace(tmp, config_toml)


def _lock(run_dir: Path) -> Any:
    """The open lock file of ``run_dir``, locked for this process (a POSIX record lock the kernel drops
    when the process dies); a :class:`RelaxRLError` when another process holds it."""
    f = open(run_dir / _LOCK_NAME, "a+")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.lockf(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise RelaxRLError(f"run directory {run_dir} is in use by a running `relaxrl train`; wait for it to "
                               "finish or stop it (Ctrl-C), or choose another --run-dir") from None
        raise
    return f


def _refuse_if_in_use(run_dir: Path) -> None:
    """Refuse a run directory another `relaxrl train` holds (creates nothing: only an existing lock file is tried)."""
    if (run_dir / _LOCK_NAME).is_file():
        _lock(run_dir).close()


@contextmanager
def _run_dir_for(plan: RunPlan) -> Iterator[None]:
    """Hold the run directory's lock, write config.toml, and undo a fresh run's start that failed.

    The lock is taken before anything of the run is written. A fresh run that fails before its
    first update (a setting the learner refuses, a structure source that does not load, Ctrl-C
    during start) removes what it created, so the same command can be given again.
    """
    run_dir = plan.run_dir
    existed = run_dir.is_dir()
    before = {p.name for p in run_dir.iterdir()} if existed else set()
    old_config = (run_dir / "config.toml").read_bytes() if (run_dir / "config.toml").is_file() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(run_dir)
    try:
        if not plan.resume:
            if list_checkpoints(run_dir):  # written between plan_run and the lock
                raise RelaxRLError(f"run directory {run_dir} already holds checkpoints; use --resume {run_dir}")
            dump_config(plan.cfg, run_dir / "config.toml")
        else:
            _store_run_id(run_dir / "config.toml", plan.cfg.run.id)
        try:
            yield
        except BaseException:
            if not plan.resume and not any(_updates_of(c) > 0 for c in list_checkpoints(run_dir)):
                _undo_start(run_dir, existed, before, old_config)
            raise
    finally:
        lock.close()


def _updates_of(checkpoint: Path) -> int:
    digits = checkpoint.stem.rpartition("-")[2]
    return int(digits) if digits.isdigit() else 0


def _undo_start(run_dir: Path, existed: bool, before: set[str], old_config: bytes | None) -> None:
    """Remove what a failed fresh start wrote into ``run_dir`` (all of it, if it created the directory)."""
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for p in run_dir.iterdir():
        if p.name in before and p.name != "checkpoints":
            continue
        if p.name == "checkpoints" and p.name in before:
            for c in list_checkpoints(run_dir):  # only checkpoints of this start: the directory held none before
                c.unlink(missing_ok=True)
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if old_config is not None:
        (run_dir / "config.toml").write_bytes(old_config)


class Run:
    """The pieces of one training run, started by the constructor; ``close()`` releases them in reverse order."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool, address: str | None, redis_url: str | None):
        self.cfg, self.run_dir = cfg, run_dir
        self.embedded = None  # replay_service.server.EmbeddedRedis when no Redis URL is given
        self.replay_metrics: ReplayMetricsServer | None = None  # when replay.metrics_port is set
        self.cluster: RayRuntime | None = None
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0
        try:
            self._wire(resume, address, redis_url)
        except BaseException:  # a failed start must not leave an embedded redis-server or a local Ray behind
            self.close(timeout_s=0.0)
            raise

    def _wire(self, resume: bool, address: str | None, redis_url: str | None) -> None:
        """Structures → replay → Ray → coordinator → learner (publishes the first weights) → actors."""
        cfg, run_dir = self.cfg, self.run_dir
        # first: a structure source that does not load (a bad file, a cell no search can bound) is refused before
        # Redis or Ray is started
        self.train_structures, self.heldout = load_structures(
            cfg.curriculum.source, cfg.curriculum, cfg.run.seed, calculator=cfg.env.calculator,
            calculator_kwargs=cfg.env.calculator_kwargs, min_distance_factor=cfg.env.min_distance_factor,
            relax_cell=cfg.env.relax_cell)
        if address:
            check_ray_address(address)
        url = redis_url or resolve_redis_url(cfg.replay.url, cfg.replay.password_file)  # a stored URL: password again
        if url:
            check_url_security(url)
        else:
            self.embedded = start_embedded(run_dir / "redis", appendfsync=cfg.replay.appendfsync)
            url = self.embedded.url
        self.replay = ReplayClient(url, cfg.replay)
        if self.embedded is None:  # a shared Redis: never train on another run's tables
            claim_namespace(self.replay, str(run_dir.resolve()), resume)
        self.replay.create_tables(batch_size=cfg.learner.batch_size)
        if cfg.replay.metrics_port:  # no separate `relaxrl replay serve`: this run exports the replay metrics
            # its own client: the collector reads Redis from the HTTP server's thread while the learner samples
            self.replay_metrics = ReplayMetricsServer(ReplayClient(url, cfg.replay), cfg.replay.metrics_port)

        self.cluster = RayRuntime(address, num_cpus=cfg.run.num_cpus, metrics_port=cfg.run.metrics_port)
        curriculum = Curriculum(self.train_structures, cfg.curriculum, min_distance_factor=cfg.env.min_distance_factor)
        self.hub = self.cluster.start_hub(curriculum, cfg.run.seed)
        # its sample's BFGS reference is computed here, once; per-structure results go to live_eval.jsonl
        self.live_eval = LiveEval.for_run(cfg, self.heldout, log_path=run_dir / LIVE_EVAL_FILE)
        self.learner = Learner(cfg, self.replay, run_dir, resume=resume, publish=self.hub.publish,
                               t_total=self.hub.current_t_total, extra_metrics=self.extra_metrics)
        if resume:
            self.hub.continue_from(self.learner.counters.t_total)
            # as metrics.jsonl (the Learner): the evaluations a killed run logged past its checkpoint come again
            truncate_metrics(run_dir / LIVE_EVAL_FILE, self.learner.counters.updates)
        self.hub.publish(self.learner.counters.updates, self.learner.actor_weights())
        seed = cfg.run.seed + 1000 * self.learner.counters.updates  # a resumed run explores anew
        self.cluster.start_actors(cfg, self.replay, self.hub, seed)

    @property
    def actors(self) -> list:
        """The Ray actor handles (online first)."""
        return self.cluster.actors if self.cluster is not None else []

    @property
    def actor_runs(self) -> list:
        """The object refs of the actors' ``run()`` loops."""
        return self.cluster.runs if self.cluster is not None else []

    def ended_actors(self) -> list[str]:
        """:meth:`RayRuntime.ended_actors` (empty before the actors start)."""
        return self.cluster.ended_actors() if self.cluster is not None else []

    def stats(self, max_age_s: float = 1.0) -> dict[str, Any]:
        """The coordinator's statistics plus the replay table sizes, at most ``max_age_s`` old."""
        if time.monotonic() - self._stats_at > max_age_s:
            s = self.hub.stats()
            try:
                for table, n in self.replay.sizes().items():
                    s[f"replay/{table}_size"] = n
            except RelaxRLError:
                pass
            self._stats, self._stats_at = s, time.monotonic()
        return self._stats

    def extra_metrics(self) -> dict[str, Any]:
        s = dict(self.stats(max_age_s=0.0))
        s.pop("t_total", None)
        s.update(self.live_eval.maybe(self.learner.counters.updates, self.learner.policy_weights,  # eval/* rows
                                      critic=self.learner.critic))
        return s

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            if self.cluster is not None:
                self.cluster.close(timeout_s)
        finally:
            if self.replay_metrics is not None:
                self.replay_metrics.close()
                self.replay_metrics = None
            if self.embedded is not None:
                self.embedded.stop()


_LOSS_NAMES = {"losses/critic": "critic", "losses/actor": "actor", "losses/bc": "bc", "losses/deviation": "deviation"}


class LearnerMetrics:
    """Learner-side Prometheus metrics through Ray's exporter (names from common.metrics)."""

    def __init__(self):
        self.m = RayMetrics()
        self._updates = 0

    def record(self, learner, logs: dict[str, float], stats: dict[str, Any]) -> None:
        m, c = self.m, learner.counters
        m.inc("relaxrl_learner_updates_total", c.updates - self._updates)
        self._updates = c.updates
        m.set("relaxrl_bc_weight", learner.bc_weight())
        for key, metric in (("charts/q_value", "relaxrl_q_value"), ("charts/batch_reward", "relaxrl_batch_reward"),
                            ("charts/td_error", "relaxrl_td_error"), ("eval/success", "relaxrl_eval_success_ratio"),
                            ("eval/force_calls_vs_bfgs", "relaxrl_eval_force_calls_vs_bfgs_ratio"),
                            ("eval/q", "relaxrl_eval_q_value"), ("eval/return", "relaxrl_eval_return")):
            if key in logs:
                m.set(metric, logs[key])
        for key, name in _LOSS_NAMES.items():
            if key in logs:
                m.set("relaxrl_loss", logs[key], name=name)
        if "weights_version" in stats:
            m.set("relaxrl_weights_version", stats["weights_version"])


def _progress_line(s: dict[str, Any], logs: dict[str, float], updates: int, width: int | None = None) -> str:
    """The status fields, most important first; with ``width``, the fields that do not fit are dropped
    (never cut in the middle), so the bar beside them keeps its size on an 80-column terminal."""
    def g(k, fmt="{:.3g}"):
        v = s.get(k, logs.get(k))
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    fields = [f"t_total {g('t_total', '{:d}')}", f"success {g('episodes/online_success', '{:.2f}')}",
              f"Fmax {g('actors/fmax')}", f"env steps/s {g('env_steps_per_s', '{:.1f}')}",
              f"Q {g('charts/q_value')} vs reward {g('charts/batch_reward')}", f"stage {g('curriculum/stage', '{:d}')}"]
    if (ev := progress_field(logs)) is not None:  # the newest live evaluation (run.eval_every), once there is one
        fields.insert(2, ev)
    if width is None:
        return "  ".join([f"updates {updates}", *fields])
    line = ""
    for f in fields:
        if len(line) + 2 * bool(line) + len(f) > width:
            break
        line = f"{line}  {f}" if line else f
    return line


_BAR_WIDTH = 20
_FIXED_WIDTH = _BAR_WIDTH + 30  # the bar, "N/M" updates (up to 17 characters), elapsed time, column gaps


class ActorsStoppedError(RelaxRLError):
    """Every actor stopped stepping during training (the run was checkpointed and can be resumed)."""


class StallWatch:
    """Says when ``t_total`` has not grown for ``limit_s`` wall seconds (0 = never): every actor has
    stopped while the learner keeps updating on old replay content."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s, self.clock = float(limit_s), clock
        self.t_total: int | None = None
        self.since = clock()

    def stalled(self, t_total: int) -> bool:
        now = self.clock()
        if t_total != self.t_total:
            self.t_total, self.since = t_total, now
            return False
        return self.limit_s > 0 and now - self.since >= self.limit_s


class StopRequest(threading.Event):
    """Set by the first Ctrl-C or SIGTERM once the run has started; ``signum`` says which."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int | None = None
        self.started = False


@contextmanager
def _stop_on_signals() -> Iterator[StopRequest]:
    """Ctrl-C (SIGINT) and SIGTERM alike (schedulers, `docker stop`, systemd send SIGTERM).

    While the run starts (``started`` false) either aborts the start: KeyboardInterrupt or
    :class:`~common.errors.Terminated`, and the start's clean-up runs. Once started, the first one
    sets the event (finish the update, checkpoint, plot, exit 130 or 143); a second one aborts.
    ``RayRuntime`` puts this handler back after ``ray.init``, which installs Ray's own for SIGTERM.
    """
    stop = StopRequest()

    def on_signal(signum, frame):
        if not stop.started or stop.is_set():
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        stop.signum = signum
        stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\nstopping ({signal.Signals(signum).name}): finishing the current update, writing a final "
              f"checkpoint ({again} again to abort)", file=sys.stderr, flush=True)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextmanager
def _progress(live: bool, header: str, total: int | None, completed: int) -> Iterator[Callable[[int, str], None]]:
    """``show(updates, line)``: a live bar on stderr, or (``live=False``) a plain line every 10 s."""
    if not live:
        last = [0.0]

        def show(updates: int, line: str) -> None:
            if time.monotonic() - last[0] > 10:
                last[0] = time.monotonic()
                print(line, flush=True)

        yield show
        return
    console = Console(stderr=True)
    console.print(header)
    bar = Progress(BarColumn(bar_width=_BAR_WIDTH), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[line]}"), console=console, transient=False)
    with bar:
        task = bar.add_task("updates", total=total, completed=completed, line="waiting for replay")
        yield lambda updates, line: bar.update(task, completed=updates, line=line)


def _line_width(progress: bool) -> int | None:
    """Room for the status fields beside the live bar on this terminal (None: plain lines, no limit)."""
    if not progress:
        return None
    return max(0, Console(stderr=True).width - _FIXED_WIDTH)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None,
          redis_url: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, checkpoint, plot and evaluate; returns the evaluation summary.

    Stopped by Ctrl-C or SIGTERM: returns ``{"interrupted": True, "checkpoint": path, "signal": signum}``
    after the final checkpoint and the plots, without the evaluation. Either while the run starts aborts
    the start (KeyboardInterrupt / :class:`~common.errors.Terminated`).
    """
    torch.set_num_threads(cfg.run.learner_threads or max(1, (os.cpu_count() or 2) - 1))
    metrics_at = (f"Ray metrics export port {cfg.run.metrics_port}" if cfg.run.metrics_port
                  else "metrics.jsonl + plots/ in the run directory")
    width = _line_width(progress)
    with _stop_on_signals() as stop:
        run = Run(cfg, run_dir, resume, address, redis_url)
        stop.started = True  # from here a first Ctrl-C or SIGTERM finishes the update and checkpoints
        learner, metrics = run.learner, LearnerMetrics()
        watch, stalled = StallWatch(cfg.run.actor_stall_s), []
        try:
            with _progress(progress, f"[bold]relaxrl train[/] run dir {run_dir}  ({metrics_at})",
                           total=cfg.learner.max_updates or None, completed=learner.counters.updates) as show:

                def on_update(logs: dict[str, float]) -> None:
                    s = run.stats()
                    if watch.stalled(int(s.get("t_total", 0))) and not stop.is_set():
                        stalled.append(f"no environment step for {watch.limit_s:g} s, every actor has stopped")
                        print(f"\nstopping: no environment step for {watch.limit_s:g} s (t_total {watch.t_total}): every "
                              "actor has stopped; writing a final checkpoint", file=sys.stderr)
                        stop.set()
                    ended = run.ended_actors() if not stop.is_set() else []
                    if ended:  # the others may go on stepping, so the stall watch would never see it
                        stalled.append(f"an actor's loop ended ({'; '.join(ended)})")
                        print(f"\nstopping: {stalled[-1]}; writing a final checkpoint", file=sys.stderr)
                        stop.set()
                    logs = {**logs, **run.live_eval.last}  # the newest live evaluation, for Prometheus and the line
                    metrics.record(learner, logs, s)
                    show(learner.counters.updates, _progress_line(s, logs, learner.counters.updates, width))

                learner.run(should_stop=stop.is_set, on_update=on_update)
        finally:
            run.close()
    plot_run(run_dir)
    if stalled:
        raise ActorsStoppedError(
            f"training stopped: {stalled[0]} (see Ray's logs); final checkpoint {list_checkpoints(run_dir)[-1]}; "
            f"continue with `relaxrl train --resume {run_dir}` (run.actor_stall_s sets the stall limit)")
    if stop.is_set():
        return {"interrupted": True, "checkpoint": list_checkpoints(run_dir)[-1], "signal": stop.signum}

    return evaluate_after_training(cfg, run_dir, run.heldout)


def train_command(args: argparse.Namespace) -> int:
    """`relaxrl train`: check everything (:func:`plan_run`), lock the run directory, train.

    Exit status 0 when training ends, 130 when Ctrl-C stopped it and 143 when SIGTERM did (after the final
    checkpoint), 2 for bad input (the CLI prints the :class:`RelaxRLError`'s one line).
    """
    plan = plan_run(args)
    run_dir = plan.run_dir
    with _run_dir_for(plan):
        result = train(plan.cfg, run_dir, resume=plan.resume, address=plan.address, redis_url=plan.redis_url,
                       progress=not args.no_progress)
    if result.get("interrupted"):
        print(f"stopped: final checkpoint {result['checkpoint']}; continue with `relaxrl train --resume {run_dir}`",
              file=sys.stderr)
        return 128 + (result.get("signal") or signal.SIGINT)

    print(f"done: {run_dir}  {after_training_line(result)} (eval.md); plots in {run_dir / 'plots'}")
    return 0
