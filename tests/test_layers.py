"""The layers, as a fresh interpreter sees them: what importing a package loads (docs/ARCHITECTURE.md).

``lint-imports`` (run by ``make test``) checks the import graph statically; these tests check
``sys.modules`` after a real import, in a subprocess so this session's imports do not count.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("gymnasium", "ray", "torch")


def loaded_after_import(module: str) -> set[str]:
    """The heavy packages (of HEAVY) in sys.modules after ``import module`` in a fresh interpreter."""
    code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("module", ["replay_service.server", "learner.learner"])
def test_replay_service_and_learner_load_neither_gymnasium_nor_ray(module):
    loaded = loaded_after_import(module)
    assert not loaded & {"gymnasium", "ray"}, f"import {module} loaded {sorted(loaded)}"


def test_the_cli_loads_no_heavy_package_before_a_command_runs():
    """`relaxrl --help` stays fast: sub-commands are imported when they run (relaxrl.cli._lazy)."""
    assert loaded_after_import("relaxrl.cli") == set()


def test_the_ray_wrappers_do_load_ray():
    """The check above can fail: the process wrappers import Ray."""
    assert "ray" in loaded_after_import("actors.ray_actors")
