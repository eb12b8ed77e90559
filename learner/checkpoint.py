"""Checkpoints in the run directory: written atomically, read without unpickling code.

A checkpoint is one ``torch.save`` of plain containers — state dicts, numbers, strings and
the resolved config as nested dicts — so ``torch.load(weights_only=True)`` reads it and a
checkpoint file from an untrusted source cannot run code.

    run_dir/checkpoints/ckpt-00000200.pt     # every LearnerConfig.checkpoint_every updates
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from common.errors import RelaxRLError

FORMAT = "relaxrl-checkpoint-1"
_NAME = re.compile(r"ckpt-(\d{8})\.pt$")


class CheckpointError(RelaxRLError):
    """A checkpoint is missing, unreadable or incompatible with the requested config."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, updates: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` (plus the format tag) as checkpoint ``updates``; keep the newest ``keep``."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"ckpt-{updates:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves either the old or the new file, never half of one
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _NAME.search(p.name)), key=lambda p: p.name)


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
        raise CheckpointError(f"checkpoint {p} does not exist; pass a checkpoint file or a run directory")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file and what to do.

    Keep ``map_location="cpu"`` (the default) for anything you will ``load_state_dict`` or
    ``set_state`` from: a checkpoint written on a GPU then loads on any machine, the modules
    and optimizers copy their tensors to their own device, and RNG states stay on the CPU.
    """
    p = resolve_checkpoint(path)
    try:
        data = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {p}: {type(e).__name__}: {str(e).splitlines()[0][:200]}. "
                              "It is not a relaxrl checkpoint or it is damaged; use another one from checkpoints/") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{p} is not a relaxrl checkpoint (format {found!r}, expected {FORMAT!r})")
    data["path"] = str(p)
    return data
