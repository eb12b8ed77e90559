"""Checks that an output path can be written, made before any work so that none is lost, and that it names
no file the user gave as input (nothing is overwritten that the user did not name as output)."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from common.errors import RelaxRLError


class OutputError(RelaxRLError):
    """An output path that cannot or must not be written (a dangling link, an input file, another output)."""


def probe_writable(target: Path, directory: Path) -> None:
    """Raise OSError unless ``target`` (an existing file, opened for append) or a new file in
    ``directory`` (created and removed at once) can be written. Changes nothing that exists."""
    if target.exists() and not target.is_dir():
        with open(target, "ab"):
            pass
        return
    fd, probe = tempfile.mkstemp(dir=directory, prefix=".relaxrl-write-check-")
    os.close(fd)
    os.unlink(probe)


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same inode when both exist (symbolic and hard links
    included), else the same resolved path."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_dangling_link(flag: str, path: str | Path) -> None:
    """Raise :class:`OutputError` when ``path`` is a symbolic link to nothing (writing through it would create
    a file somewhere else, or fail after the work is done)."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise OutputError(f"{flag} {p} is a symbolic link to {os.readlink(p)}, which does not exist; give the "
                          "path of a regular file (or remove the link)")


def refuse_overwriting(outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]) -> None:
    """Raise :class:`OutputError` when an output path names an input (``inputs``: what each is, e.g.
    'the input structure' → path) or another output (``outputs``: flag → path; None = not given).

    Checked before any work: a dangling symbolic link, an input file, and two outputs on one file are refused.
    """
    given = [(flag, Path(p)) for flag, p in outputs.items() if p is not None]
    for flag, p in given:
        refuse_dangling_link(flag, p)
        for what, q in inputs.items():
            if q is not None and Path(q).exists() and same_file(p, q):
                raise OutputError(f"{flag} {p} is {what} ({q}); relaxrl does not overwrite its inputs: give "
                                  f"{flag} another path")
    for k, (flag, p) in enumerate(given):
        for other, q in given[k + 1:]:
            if same_file(p, q):
                raise OutputError(f"{flag} and {other} are the same file ({p}); give them different names")
