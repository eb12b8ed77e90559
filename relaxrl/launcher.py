"""`relaxrl train`: wire replay, actors and learner on Ray, show progress, leave a complete run directory.

:class:`Run` wires one run in start order (``Run._wire``): the replay (embedded Redis or a
URL), Ray (``relaxrl.ray_runtime``: the coordinator and the actor processes), and the
learner, which runs here, in the driver process, and publishes weights through the
coordinator. :func:`train` drives the learner, then plots and evaluates.

Run directory::

    config.toml          resolved configuration (a resume reads it back)
    checkpoints/         ckpt-<updates>.pt, the newest few
    metrics.jsonl        one row every learner.log_every updates, x-axis t_total
    plots/*.png          actual move, Q vs reward, action scale, a_back, Fmax/success, losses, replay sizes
    eval.json, eval.md   `relaxrl eval`'s report: trained vs untrained policy (and BFGS) on held-out structures
    plots/eval_*.png     its force-call and Fmax plots
    redis/               the embedded Redis (append-only file) when no --redis-url is given
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.ray_metrics import RayMetrics
from actors.structures import Curriculum, load_structures
from common.config import RunConfig, dump_config, load_config
from common.errors import RelaxRLError
from learner.learner import Learner
from relaxrl.ray_runtime import RayRuntime, check_ray_address
from relaxrl.training_report import plot_run
from replay_service.client import ReplayClient
from replay_service.server import ReplayMetricsServer, check_url_security, start_embedded

log = logging.getLogger("relaxrl.train")


def resolve_run(args: argparse.Namespace) -> tuple[RunConfig, Path, bool]:
    """(config, run_dir, resuming) from the command-line arguments."""
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.toml").is_file():
            raise RelaxRLError(f"--resume {run_dir}: no config.toml there; pass the directory of an earlier `relaxrl train` run")
        cfg = load_config(run_dir / "config.toml", args.overrides)
        return cfg, run_dir, True
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or cfg.run.run_dir or f"runs/{cfg.run.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise RelaxRLError(f"run directory {run_dir} already holds checkpoints; use --resume {run_dir} to continue it "
                           "or choose another --run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.toml")
    return cfg, run_dir, False


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
        """Replay → Ray → coordinator → learner (publishes the first weights) → actors."""
        cfg, run_dir = self.cfg, self.run_dir
        if address:
            check_ray_address(address)
        url = redis_url or cfg.replay.url
        if url:
            check_url_security(url)
        else:
            self.embedded = start_embedded(run_dir / "redis", appendfsync=cfg.replay.appendfsync)
            url = self.embedded.url
        self.replay = ReplayClient(url, cfg.replay)
        self.replay.create_tables(batch_size=cfg.learner.batch_size)
        if cfg.replay.metrics_port:  # no separate `relaxrl replay serve`: this run exports the replay metrics
            # its own client: the collector reads Redis from the HTTP server's thread while the learner samples
            self.replay_metrics = ReplayMetricsServer(ReplayClient(url, cfg.replay), cfg.replay.metrics_port)

        self.cluster = RayRuntime(address, num_cpus=cfg.run.num_cpus, metrics_port=cfg.run.metrics_port)
        self.train_structures, self.heldout = load_structures(
            cfg.curriculum.source, cfg.curriculum, cfg.run.seed, calculator=cfg.env.calculator,
            calculator_kwargs=cfg.env.calculator_kwargs, min_distance_factor=cfg.env.min_distance_factor)
        self.hub = self.cluster.start_hub(Curriculum(self.train_structures, cfg.curriculum), cfg.run.seed)
        self.learner = Learner(cfg, self.replay, run_dir, resume=resume, publish=self.hub.publish,
                               t_total=self.hub.current_t_total, extra_metrics=self.extra_metrics)
        if resume:
            self.hub.continue_from(self.learner.counters.t_total)
        self.hub.publish(self.learner.counters.updates, self.learner.actor_weights())
        self.untrained_weights = None if resume else self.learner.actor_weights()
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
                            ("charts/td_error", "relaxrl_td_error")):
            if key in logs:
                m.set(metric, logs[key])
        for key, name in _LOSS_NAMES.items():
            if key in logs:
                m.set("relaxrl_loss", logs[key], name=name)
        if "weights_version" in stats:
            m.set("relaxrl_weights_version", stats["weights_version"])


def _progress_line(s: dict[str, Any], logs: dict[str, float], updates: int) -> str:
    def g(k, fmt="{:.3g}"):
        v = s.get(k, logs.get(k))
        return fmt.format(v) if isinstance(v, (int, float)) else "–"

    return (f"updates {updates}  t_total {g('t_total', '{:d}')}  env steps/s {g('env_steps_per_s', '{:.1f}')}  "
            f"success {g('episodes/online_success', '{:.2f}')}  Fmax {g('actors/fmax')}  "
            f"Q {g('charts/q_value')} vs reward {g('charts/batch_reward')}  stage {g('curriculum/stage', '{:d}')}")


@contextmanager
def _stop_on_sigint() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (finish the update, checkpoint, evaluate); the second aborts."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping: finishing the current update, writing a final checkpoint (Ctrl-C again to abort)")

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, old)


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
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[line]}"), console=console, transient=False)
    with bar:
        task = bar.add_task("updates", total=total, completed=completed, line="waiting for replay")
        yield lambda updates, line: bar.update(task, completed=updates, line=line)


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None,
          redis_url: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, checkpoint, plot and evaluate; returns the evaluation summary."""
    torch.set_num_threads(cfg.run.learner_threads or max(1, (os.cpu_count() or 2) - 1))
    metrics_at = (f"Ray metrics export port {cfg.run.metrics_port}" if cfg.run.metrics_port
                  else "metrics.jsonl + plots/ in the run directory")
    with _stop_on_sigint() as stop:
        run = Run(cfg, run_dir, resume, address, redis_url)
        learner, metrics = run.learner, LearnerMetrics()
        try:
            with _progress(progress, f"[bold]relaxrl train[/] run dir {run_dir}  ({metrics_at})",
                           total=cfg.learner.max_updates or None, completed=learner.counters.updates) as show:

                def on_update(logs: dict[str, float]) -> None:
                    s = run.stats()
                    metrics.record(learner, logs, s)
                    show(learner.counters.updates, _progress_line(s, logs, learner.counters.updates))

                learner.run(should_stop=stop.is_set, on_update=on_update)
        finally:
            run.close()
    plot_run(run_dir)
    from relaxrl.evaluate import evaluate_after_training

    return evaluate_after_training(cfg, run_dir, run.heldout, run.untrained_weights)


def train_command(args: argparse.Namespace) -> int:
    cfg, run_dir, resume = resolve_run(args)
    result = train(cfg, run_dir, resume=resume, address=args.address, redis_url=args.redis_url,
                   progress=not args.no_progress)
    from relaxrl.evaluate import after_training_line

    print(f"done: {run_dir}  {after_training_line(result)} (eval.md); plots in {run_dir / 'plots'}")
    return 0
