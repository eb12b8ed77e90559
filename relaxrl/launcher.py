"""`relaxrl train`: wire replay, actors and learner on Ray, show progress, leave a complete run directory.

Run directory::

    config.toml          resolved configuration (a resume reads it back)
    checkpoints/         ckpt-<updates>.pt, the newest few
    metrics.jsonl        one row every learner.log_every updates, x-axis t_total
    plots/*.png          actual move, Q vs reward, action scale, a_back, Fmax/success, losses, replay sizes
    eval.json, eval.md   trained vs untrained policy on held-out structures
    redis/               the embedded Redis (append-only file) when no --redis-url is given
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig, dump_config, load_config
from common.errors import RelaxRLError

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


class Run:
    """The pieces of one training run; ``close()`` releases them in order."""

    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool, address: str | None, redis_url: str | None):
        self.cfg, self.run_dir = cfg, run_dir
        self.embedded = None
        self.replay_metrics = None  # replay_service.server.ReplayMetricsServer when replay.metrics_port is set
        self.started_ray = False
        self.actors: list = []
        try:
            self._start(resume, address, redis_url)
        except BaseException:  # a failed start must not leave an embedded redis-server or a local Ray behind
            self._abort()
            raise

    def _abort(self) -> None:
        import ray

        for x in self.actors:
            ray.kill(x)
        if self.started_ray:
            ray.shutdown()
        if self.replay_metrics is not None:
            self.replay_metrics.close()
        if self.embedded is not None:
            self.embedded.stop()

    def _start(self, resume: bool, address: str | None, redis_url: str | None) -> None:
        import ray

        from actors.ray_actors import RemoteCoordinator, make_actor, publish_weights
        from actors.structures import Curriculum, load_structures
        from learner.learner import Learner
        from replay_service.client import ReplayClient
        from replay_service.server import check_url_security

        cfg, run_dir = self.cfg, self.run_dir
        if address and not ray.is_initialized():
            check_ray_address(address)
        url = redis_url or cfg.replay.url
        if url:
            check_url_security(url)
        else:
            from replay_service.server import start_embedded

            self.embedded = start_embedded(run_dir / "redis", appendfsync=cfg.replay.appendfsync)
            url = self.embedded.url
        self.replay = ReplayClient(url, cfg.replay)
        self.replay.create_tables(batch_size=cfg.learner.batch_size)
        if cfg.replay.metrics_port:  # no separate `relaxrl replay serve`: this run exports the replay metrics
            from replay_service.server import ReplayMetricsServer

            # its own client: the collector reads Redis from the HTTP server's thread while the learner samples
            self.replay_metrics = ReplayMetricsServer(ReplayClient(url, cfg.replay), cfg.replay.metrics_port)

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = cfg.run.num_cpus or os.cpu_count()
                if cfg.run.metrics_port:
                    kwargs["_metrics_export_port"] = cfg.run.metrics_port
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise RelaxRLError(f"cannot start or join Ray (address={address or 'local'}): {e}. "
                                   "Check `ray status` on the head node or omit --address for a local instance") from None
            self.started_ray = True

        self.train_structures, self.heldout = load_structures(cfg.curriculum.source, cfg.curriculum, cfg.run.seed)
        self.hub = RemoteCoordinator.remote(Curriculum(self.train_structures, cfg.curriculum), 0, cfg.run.seed)
        hub = self.hub
        self.learner = Learner(cfg, self.replay, run_dir, resume=resume,
                               publish=lambda v, s: publish_weights(hub, v, s),
                               t_total=lambda: ray.get(hub.current_t_total.remote()),
                               extra_metrics=self.extra_metrics)
        if resume:
            ray.get(hub.continue_from.remote(self.learner.counters.t_total))
        publish_weights(hub, self.learner.counters.updates, self.learner.actor_weights())
        self.untrained_weights = None if resume else self.learner.actor_weights()
        a = cfg.actors
        seed = cfg.run.seed + 1000 * self.learner.counters.updates  # a resumed run explores anew
        for i in range(a.num_online):
            self.actors.append(make_actor("online", cfg, self.replay, hub, i, seed))
        for j in range(a.num_expert):
            self.actors.append(make_actor("expert", cfg, self.replay, hub, a.num_online + j, seed))
        self.actor_runs = [x.run.remote() for x in self.actors]
        self._stats: dict[str, Any] = {}
        self._stats_at = 0.0

    def stats(self, max_age_s: float = 1.0) -> dict[str, Any]:
        import ray

        if time.monotonic() - self._stats_at > max_age_s:
            s = ray.get(self.hub.stats.remote())
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
        import ray

        try:
            if ray.is_initialized():
                ray.get(self.hub.stop.remote(), timeout=10)
                ray.wait(self.actor_runs, num_returns=len(self.actor_runs), timeout=timeout_s)
                for x in self.actors:
                    ray.kill(x)
        finally:
            if self.started_ray:
                ray.shutdown()
            if self.replay_metrics is not None:
                self.replay_metrics.close()
                self.replay_metrics = None
            if self.embedded is not None:
                self.embedded.stop()


_LOSS_NAMES = {"losses/critic": "critic", "losses/actor": "actor", "losses/bc": "bc", "losses/deviation": "deviation"}


class LearnerMetrics:
    """Learner-side Prometheus metrics through Ray's exporter (names from common.metrics)."""

    def __init__(self):
        from actors.ray_metrics import RayMetrics

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


def train(cfg: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None,
          redis_url: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, checkpoint, plot and evaluate; returns the evaluation summary."""
    from relaxrl.training_report import plot_run

    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True
        print("\nstopping: finishing the current update, writing a final checkpoint (Ctrl-C again to abort)")

    import torch

    torch.set_num_threads(cfg.run.learner_threads or max(1, (os.cpu_count() or 2) - 1))
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        run = Run(cfg, run_dir, resume, address, redis_url)
    except BaseException:
        signal.signal(signal.SIGINT, old)
        raise
    learner = run.learner
    metrics = LearnerMetrics()
    metrics_at = f"Ray metrics export port {cfg.run.metrics_port}" if cfg.run.metrics_port else "metrics.jsonl + plots/ in the run directory"
    try:
        total = cfg.learner.max_updates or None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(stderr=True)
            console.print(f"[bold]relaxrl train[/] run dir {run_dir}  ({metrics_at})")
            bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TextColumn("{task.fields[line]}"), console=console, transient=False)
            with bar:
                task = bar.add_task("updates", total=total, completed=learner.counters.updates, line="waiting for replay")

                def on_update(logs):
                    s = run.stats()
                    metrics.record(learner, logs, s)
                    bar.update(task, completed=learner.counters.updates, line=_progress_line(s, logs, learner.counters.updates))

                learner.run(should_stop=lambda: stop["flag"], on_update=on_update)
        else:
            last = [0.0]

            def on_update(logs):
                metrics.record(learner, logs, run.stats())
                if time.monotonic() - last[0] > 10:
                    last[0] = time.monotonic()
                    print(_progress_line(run.stats(), logs, learner.counters.updates), flush=True)

            learner.run(should_stop=lambda: stop["flag"], on_update=on_update)
    finally:
        signal.signal(signal.SIGINT, old)
        untrained = run.untrained_weights
        heldout = run.heldout
        run.close()
    plot_run(run_dir)
    summary = evaluate_run(cfg, run_dir, heldout, untrained)
    return summary


def evaluate_run(cfg: RunConfig, run_dir: Path, heldout, untrained_weights) -> dict[str, Any]:
    """Trained vs untrained (initial) policy on held-out structures → eval.json and eval.md."""
    from learner.policy import Policy, load_policy
    from relaxrl.training_report import evaluate_policy

    structures = [a for a in heldout if not cfg.run.eval_max_atoms or len(a) <= cfg.run.eval_max_atoms]
    structures = structures[: cfg.run.eval_episodes]
    trained = load_policy(run_dir)
    if untrained_weights is None:  # a resumed run: the untrained policy is a fresh initialisation with the run's seed
        import torch

        torch.manual_seed(cfg.run.seed)
    untrained = Policy(cfg)
    if untrained_weights is not None:
        untrained.load_weights(untrained_weights)
    result = {"heldout_structures": len(structures), "fmax": cfg.env.fmax, "max_steps": cfg.env.max_steps,
              "trained": evaluate_policy(trained, structures, cfg.env),
              "untrained": evaluate_policy(untrained, structures, cfg.env),
              "checkpoint": str(trained.version)}
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    t, u = result["trained"], result["untrained"]
    (run_dir / "eval.md").write_text(
        f"# Held-out evaluation ({len(structures)} structures, Fmax < {cfg.env.fmax} eV/Å within {cfg.env.max_steps} steps)\n\n"
        "| policy | success rate | mean steps | median final Fmax (eV/Å) |\n|---|---|---|---|\n"
        f"| trained (update {trained.version}) | {t['success_rate']:.2f} | {t['mean_steps']:.1f} | {t['median_fmax_final']:.3f} |\n"
        f"| untrained | {u['success_rate']:.2f} | {u['mean_steps']:.1f} | {u['median_fmax_final']:.3f} |\n")
    return result


def train_command(args: argparse.Namespace) -> int:
    cfg, run_dir, resume = resolve_run(args)
    result = train(cfg, run_dir, resume=resume, address=args.address, redis_url=args.redis_url,
                   progress=not args.no_progress)
    t, u = result["trained"], result["untrained"]
    print(f"done: {run_dir}  held-out success trained {t['success_rate']:.2f} vs untrained {u['success_rate']:.2f} "
          f"({result['heldout_structures']} structures); plots in {run_dir / 'plots'}")
    return 0
