"""Checks that an output path can be written, made before any work so that none is lost."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
