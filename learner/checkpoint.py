"""Checkpoints in the run directory: written atomically, read without unpickling code.

A checkpoint is one ``torch.save`` of plain containers — state dicts, numbers, strings and
the resolved config as nested dicts — so ``torch.load(weights_only=True)`` reads it and a
checkpoint file from an untrusted source cannot run code.

    run_dir/checkpoints/ckpt-00000200.pt     # every LearnerConfig.checkpoint_every updates
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import tomllib
import torch

from common.errors import RelaxRLError

FORMAT = "relaxrl-checkpoint-1"
_NAME = re.compile(r"ckpt-(\d{8})\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive; anything else is not one of ours
WHAT_IS_A_CHECKPOINT = ("a checkpoint is a file runs/NAME/checkpoints/ckpt-NNNNNNNN.pt written by `relaxrl train`; "
                        "pass that file or the run directory runs/NAME")
"""The end of every 'this is not a checkpoint' message: what to pass instead."""


class CheckpointError(RelaxRLError):
    """A checkpoint is missing, unreadable or incompatible with the requested config."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, updates: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` (plus the format tag) as checkpoint ``updates``; keep the newest ``keep`` (0 = all)."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt-{updates:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves either the old or the new file, never half of one
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else ():
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.search(p.name)), key=lambda p: p.name)


def checkpoint_updates(path: str | Path) -> int:
    """The learner update a checkpoint file was written at, from its name (``ckpt-NNNNNNNN.pt``, as
    :func:`save_checkpoint` names it; :func:`list_checkpoints` lists only such names)."""
    m = _NAME.search(Path(path).name)
    if m is None:
        raise CheckpointError(f"{path}: not a checkpoint name; {WHAT_IS_A_CHECKPOINT}")
    return int(m.group(1))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (→ its newest checkpoint)."""
    p = Path(path)
    if p.is_dir():
        found = list_checkpoints(p)
        if not found:
            raise CheckpointError(f"no checkpoint in {p}/checkpoints; train first (relaxrl train --run-dir {p}) "
                                  "or pass a checkpoint file")
        return found[-1]
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; {WHAT_IS_A_CHECKPOINT}")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file and what to do.

    Keep ``map_location="cpu"`` (the default) for anything you will ``load_state_dict`` or
    ``set_state`` from: a checkpoint written on a GPU then loads on any machine, the modules
    and optimizers copy their tensors to their own device, and RNG states stay on the CPU.

    Any file that is not a complete relaxrl checkpoint raises :class:`CheckpointError` (never
    another exception): an empty or foreign file (a ``config.toml``, a structure) is refused
    before ``torch.load`` sees it, and the entries every checkpoint has (``config``, ``actor``,
    ``counters``) are checked for their types (:func:`check_payload`).
    """
    p = resolve_checkpoint(path)
    _check_file_kind(p)
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a Python object: never unpickle it
        raise CheckpointError(f"cannot read checkpoint {p}: it holds Python objects other than tensors, numbers, "
                              "strings and dicts, which are refused (loading them could run code); it was not written "
                              f"by relaxrl ({WHAT_IS_A_CHECKPOINT})") from None
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {_first_line(e)}. It is not a relaxrl "
                              f"checkpoint or it is damaged (truncated?); use another one ({WHAT_IS_A_CHECKPOINT})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{p} is not a relaxrl checkpoint (format {found!r}, expected {FORMAT!r}); "
                              f"{WHAT_IS_A_CHECKPOINT}")
    check_payload(p, data)
    check_same_run(p, data)
    data["path"] = str(p)
    return data


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint file sits in (``RUN/checkpoints/ckpt-N.pt`` next to ``RUN/config.toml``), or None."""
    p = Path(checkpoint)
    run_dir = p.parent.parent
    return run_dir if p.parent.name == "checkpoints" and (run_dir / "config.toml").is_file() else None


def run_identity(config: Any) -> tuple[str, str]:
    """(run.id, run.name) of a config dict (a checkpoint's, a config.toml's); empty strings where it has none
    (runs of earlier versions)."""
    run = config.get("run") if isinstance(config, dict) else None
    run = run if isinstance(run, dict) else {}
    return str(run.get("id") or ""), str(run.get("name") or "")


def check_same_run(p: str | Path, data: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when checkpoint ``p`` sits in the run directory of another run.

    Every run gets an identity (``run.id``) in its config.toml and checkpoints; a checkpoint copied into
    another run's ``checkpoints/`` would otherwise be relaxed with, evaluated or resumed under that run's
    settings without a word. Runs of earlier versions (no identity on either side) are not compared.
    """
    run_dir = run_dir_of(p)
    if run_dir is None:
        return
    ckpt_id, ckpt_name = run_identity(data.get("config"))
    try:
        dir_id, dir_name = run_identity(tomllib.loads((run_dir / "config.toml").read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # a broken config.toml is reported where it is read
        return
    if ckpt_id and dir_id and ckpt_id != dir_id:
        raise CheckpointError(
            f"{p} belongs to another run: it was written by run {ckpt_name!r} (id {ckpt_id}), but it sits in {run_dir}, "
            f"the directory of run {dir_name!r} (id {dir_id}); it was copied between runs and would be used with the "
            f"other run's settings. Use the directory of the run it came from, or move the file out of {run_dir} "
            "and pass the file itself")


def check_weights_dtype(p: str | Path, entry: str, state: dict[str, Any], dtype: torch.dtype, config_key: str) -> None:
    """Raise :class:`CheckpointError` unless every tensor of the state dict ``entry`` has ``dtype`` (the networks'
    ``network.dtype``): ``load_state_dict`` would cast other weights (int64, float16) silently."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.dtype != dtype:
            raise CheckpointError(f"{p}: its {entry!r} weights are {str(value.dtype).replace('torch.', '')} "
                                  f"(entry {name!r}) but its config says {config_key} = "
                                  f"{str(dtype).replace('torch.', '')!r}; the file was altered or damaged: use "
                                  f"another checkpoint ({WHAT_IS_A_CHECKPOINT})")


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters; '' for an empty message)."""
    return (str(e).strip().splitlines() or [""])[0][:200]


def _check_file_kind(p: Path) -> None:
    """Refuse an empty file and a file that is not a zip archive (torch.save's format) before torch reads it."""
    try:
        with open(p, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {p} ({e.strerror or e}); check its permissions") from None
    if not head:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes): an interrupted copy or a full disk? "
                              f"Use another one ({WHAT_IS_A_CHECKPOINT})")
    if head != _ZIP_MAGIC:
        looks = {".toml": "a config file", ".json": "a JSON file", ".jsonl": "a metrics file", ".md": "a report",
                 ".cif": "a structure", ".xyz": "a structure", ".extxyz": "a structure", ".traj": "a trajectory",
                 ".png": "a plot"}.get(p.suffix.lower(), "not a checkpoint")
        hint = ""
        if list_checkpoints(p.parent):
            hint = f" ({p.parent} is a run directory: pass it to use its newest checkpoint)"
        raise CheckpointError(f"{p} is {looks}, not a relaxrl checkpoint{hint}; {WHAT_IS_A_CHECKPOINT}")


def check_payload(p: str | Path, data: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` unless ``data`` has the entries every relaxrl checkpoint has, of their types.

    ``config``: a dict; ``actor``: a state dict (names → tensors); ``counters`` (when present): a
    dict of non-negative integers. The learner's extra entries are checked where they are loaded.
    """
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{p} is damaged or incomplete: {what}; use another checkpoint ({WHAT_IS_A_CHECKPOINT})")

    for key in ("config", "actor"):
        if key not in data:
            raise damaged(f"it has no {key!r} entry")
        if not isinstance(data[key], dict):
            raise damaged(f"its {key!r} entry is a {type(data[key]).__name__}, not a dict")
    bad = [k for k, v in data["actor"].items() if not isinstance(v, torch.Tensor)]
    if bad or not data["actor"]:
        raise damaged(f"its 'actor' weights are {'empty' if not bad else f'not tensors (entry {bad[0]!r})'}")
    counters = data.get("counters", {})
    if not isinstance(counters, dict):
        raise damaged(f"its 'counters' entry is a {type(counters).__name__}, not a dict")
    for k, v in counters.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise damaged(f"counter {k!r} is {v!r}, not a non-negative integer")
