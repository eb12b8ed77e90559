"""The `relaxrl` command line.

    relaxrl train [--config configs/demo.toml] [--set section.key=value ...] [--run-dir DIR]
                  [--resume RUN_DIR] [--address auto] [--redis-url URL]
    relaxrl replay serve [--config ...] [--redis-url URL] [--metrics-port 9101]
    relaxrl relax INPUT --checkpoint CKPT [...]
    relaxrl eval --checkpoint CKPT [...]
    relaxrl config show [--config ...] [--set ...]

Each sub-command's work lives in its own module; this file only parses arguments and
turns expected failures (bad config, bad structure file, unreachable service) into one
clear line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import tomli_w

from common.config import SECTIONS, describe, load_config, to_dict
from common.errors import RelaxRLError, Terminated

DEFAULT_CONFIG = str(Path(__file__).resolve().parent / "data" / "demo.toml")
"""The demo preset (configs/demo.toml), shipped inside the package so `relaxrl train` and `relaxrl config show`
work from any directory (relaxrl/data/demo.toml links to it in the repository; a wheel holds a copy)."""


def _config_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG,
                 set_help: str = "override one config value; repeatable, e.g. --set learner.actor_lr=1e-4") -> None:
    p.add_argument("--config", default=default,
                   help="TOML preset (default: " + ("the demo preset, configs/demo.toml" if default == DEFAULT_CONFIG
                                                   else str(default)) + ")")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=set_help)


def _cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.docs:
        for name, cls in SECTIONS.items():
            print(f"[{name}]")
            print(describe(cls))
    else:
        print(tomli_w.dumps(to_dict(cfg)), end="")
    return 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A sub-command imported when it runs: `relaxrl --help` loads neither torch nor ray (documented lazy import)."""

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).__dict__[func](args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relaxrl", description="Train and use RL agents that relax atomic structures.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in (_add_train, _add_replay, _add_relax, _add_eval, _add_config):
        add_command(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train an agent (local Ray + embedded Redis by default)")
    p.add_argument("--config", default=None,
                   help="TOML preset of a new run (default: the demo preset, configs/demo.toml, shipped with relaxrl); "
                        "not with --resume, which reads the run's own")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value; repeatable, e.g. --set learner.actor_lr=1e-4")
    p.add_argument("--run-dir", default=None, help="run directory of a new run (default runs/<name>-<time>); "
                   "not with --resume")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its config.toml (and --set overrides)")
    p.add_argument("--address", default=None,
                   help="join an existing Ray cluster: the head's GCS host:port, or 'auto' on one of its nodes "
                        "(default: a local Ray on 127.0.0.1 only)")
    p.add_argument("--redis-url", default=None,
                   help="use an external Redis (redis://host:6379/0) instead of the embedded one; give its password "
                        "through RELAXRL_REDIS_PASSWORD or --redis-password-file, not in the URL (ps shows it)")
    p.add_argument("--redis-password-file", default=None, metavar="FILE",
                   help="file whose first line is the Redis password (replay.password_file; default "
                        "$RELAXRL_REDIS_PASSWORD)")
    p.add_argument("--trust-checkpoint-calculator", action="store_true",
                   help="with --resume: use the calculator the run's config.toml names even when it is not built in "
                        "(a 'module:Class' is imported and called with the stored kwargs: only for runs you trust)")
    p.add_argument("--trust-run-config", action="store_true",
                   help="with --resume: do what the run's config.toml says without naming it again: connect to its "
                        "replay.url (your Redis password goes there), read its replay.password_file and use its "
                        "calculator (only for runs you trust; without it give --redis-url and --redis-password-file "
                        "again)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")
    p.set_defaults(func=_lazy("relaxrl.launcher", "train_command"))


def _add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay service")
    rsub = p.add_subparsers(dest="replay_command", required=True)
    ps = rsub.add_parser("serve", help="create/check the replay tables and export Prometheus metrics")
    _config_args(ps)
    ps.add_argument("--redis-url", default=None, help="Redis URL (default: embedded redis-server in --data-dir)")
    ps.add_argument("--data-dir", default="replay-data", help="directory of the embedded Redis (AOF on)")
    ps.add_argument("--metrics-port", type=int, default=9101, help="Prometheus endpoint port (default 9101)")
    ps.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint binds (default 127.0.0.1)")
    ps.set_defaults(func=_lazy("replay_service.server", "serve_command"))


def _add_relax(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("relax", help="relax a structure with a trained policy")
    p.add_argument("input", help="structure file (CIF, POSCAR, extxyz, .traj, anything ASE or pymatgen reads)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run directory")
    p.add_argument("--index", type=int, default=None, metavar="N",
                   help="frame of a multi-frame file to relax, as ase.io.read (0 = first, -1 = last); "
                        "required when the file has several frames")
    p.add_argument("--fmax", type=float, default=0.05, help="converged when the largest force is below this (eV/Å, > 0)")
    p.add_argument("--steps", type=int, default=200, help="at most this many optimizer steps (>= 1)")
    p.add_argument("--calculator", default=None,
                   help="ASE calculator ('emt', 'chgnet', 'module:Class'; default: the checkpoint's env.calculator)")
    p.add_argument("--calculator-kwargs", default=None, metavar="JSON",
                   help="its keyword arguments as a JSON object (default: the checkpoint's env.calculator_kwargs)")
    p.add_argument("--trust-checkpoint-calculator", action="store_true",
                   help="use the calculator the checkpoint names even when it is not built in (a 'module:Class' "
                        "is imported and called with the checkpoint's kwargs: only for checkpoints you trust)")
    p.add_argument("--out", default=None,
                   help="relaxed structure, format from the name (.cif, .extxyz, .traj, POSCAR, ...); default "
                        "relaxed.cif, refused if that file exists; an explicit --out is overwritten (never the input "
                        "or the checkpoint)")
    p.add_argument("--trajectory", default=None,
                   help="ASE trajectory of every step (its directory must exist; never the input, the checkpoint or --out)")
    p.add_argument("--hybrid", type=int, default=0, metavar="K", help="hand over to BFGS after K steps without progress (0 = off)")
    p.add_argument("--relax-cell", action="store_true",
                   help="relax the cell too: the policy moves FrechetCellFilter(atoms)'s rows (atoms and cell) and "
                        "--fmax is the filter's generalised force; needs a periodic structure and a calculator with stress")
    p.set_defaults(func=_lazy("relaxrl.relax", "relax_command"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compare the trained policy with ASE's optimizers")
    p.add_argument("--checkpoint", default=None, help="checkpoint file or run directory (needed for 'rl')")
    _config_args(p, default=None, set_help="override a config value eval uses (also on a checkpoint's config): "
                 "curriculum.*, run.seed, env.calculator, env.calculator_kwargs, env.min_distance_factor, "
                 "env.max_step; other keys are refused")
    p.add_argument("--structures", default="held-out",
                   help="directory of structure files, 'held-out' (the config's split), 'suite' (the generalisation "
                        "suite, 27 structures of 6 kinds, reported per kind), 'suite-val' (its validation draw: the same "
                        "recipes, other random draws, for choosing settings), 'suite-large' (9 structures of 100-256 "
                        "atoms), an Al–Fe set: 'alfe-heldout' (2–8 atoms, 16 cells), 'alfe-large' (12–20 atoms, "
                        "8 cells), or 'crystals' (17 rattled, strained crystals across chemistry; needs a calculator "
                        "with their elements, e.g. chgnet); several separated by commas are reported per set and pooled")
    p.add_argument("--optimizers", default="rl,untrained,bfgs,bfgsls,lbfgs,fire,precon,goqn",
                   help="policies: 'rl' (the checkpoint's), 'untrained' (the weights its run started from; without "
                        "--checkpoint those of --config's); ASE's: bfgs, bfgsls (BFGSLineSearch), lbfgs, fire, "
                        "precon (PreconLBFGS with Exp(A=3)), goqn (GoodOldQuasiNewton), gpmin (at most 20 atoms). "
                        "At least one of ASE's: their minima are the reference")
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=None,
                   help="at most this many steps per run (default: 300 for suite and suite-val, 600 for suite-large, "
                        "500 for crystals, 200 otherwise)")
    p.add_argument("--calculator", default=None,
                   help="ASE calculator ('emt', 'chgnet', 'module:Class'; default: the checkpoint's env.calculator)")
    p.add_argument("--calculator-kwargs", default=None, metavar="JSON",
                   help="its keyword arguments as a JSON object (default: the checkpoint's env.calculator_kwargs)")
    p.add_argument("--trust-checkpoint-calculator", action="store_true",
                   help="use the calculator the checkpoint names even when it is not built in (a 'module:Class' "
                        "is imported and called with the checkpoint's kwargs: only for checkpoints you trust)")
    p.add_argument("--limit", type=int, default=0, help="evaluate at most this many structures (0 = all; >= 0)")
    p.add_argument("--hybrid", type=int, default=0, metavar="K", help="'rl' hands over to BFGS after K steps without progress (0 = off)")
    p.add_argument("--curvature-check", type=int, default=None, metavar="N",
                   help="on structures of at most N free atoms (default 40), a converged run that ended on a saddle "
                        "point is no success (finite-difference Hessian, 6 uncounted force calls per free atom; with "
                        "--relax-cell over the cell filter's rows, 18 more; 0 = off)")
    p.add_argument("--relax-cell", action="store_true",
                   help="relax atoms and cell: every optimizer (the policies too) runs on FrechetCellFilter(atoms) and "
                        "--fmax is the filter's generalised force (periodic structures, a calculator with stress)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True,
                   help="output directory for report.json, report.md and plots (created; not an existing file)")
    p.set_defaults(func=_lazy("relaxrl.eval_cli", "eval_command"))


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    pc = csub.add_parser("show", help="print the resolved configuration (or --docs: every key documented)")
    _config_args(pc)
    pc.add_argument("--docs", action="store_true")
    pc.set_defaults(func=_cmd_config_show)


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``relaxrl config show --docs | head``): stop quietly, as SIGPIPE would.

    stdout is pointed at /dev/null so that the interpreter's final flush does not fail again;
    the status is the shell's for a process killed by SIGPIPE (128 + 13).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # stdout without a file descriptor (tests)
        pass
    return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # --help into a closed pipe
        return _quiet_broken_pipe()
    try:
        return int(args.func(args) or 0)
    except RelaxRLError as e:
        print(f"relaxrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:  # a file or device refused by the system that no check above turned into a RelaxRLError
        where = f"{e.filename}: " if e.filename else ""
        print(f"relaxrl {args.command}: error: {where}{e.strerror or e}; check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (common.errors.Terminated) where a command turns it into one
        print(f"relaxrl {args.command}: {'terminated' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_status", 130)


if __name__ == "__main__":
    sys.exit(main())
