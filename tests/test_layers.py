"""The layers, as a fresh interpreter sees them: what importing a package loads (docs/ARCHITECTURE.md).

``lint-imports`` (run by ``make test``) checks the import graph statically; these tests check
``sys.modules`` after a real import, in a subprocess so this session's imports do not count.
The last tests keep two rules of ARCHITECTURE true: an import inside a function says why, and no function
is over 60 lines.
"""
from __future__ import annotations

import ast
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


# The code the rule covers: the packages and the deploy scripts. Tests and bench/ scripts are left
# out: a test imports what that one test needs (and a few check what an import loads), and a bench
# script imports its peers' packages (RLlib, redis) only on the path that measures them.
IMPORT_RULE_DIRS = ("common", "actors", "learner", "replay_service", "relaxrl", "deploy")


def _has_reason(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or on the line above its block of imports (a ``try:`` may sit between)."""
    if "#" in lines[lineno - 1]:
        return True
    i = lineno - 2
    while i >= 0 and (lines[i].strip().startswith(("import ", "from ")) or lines[i].strip() == "try:"):
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def unexplained_function_imports(source: str, name: str) -> list[str]:
    """``name:line: statement`` of each import inside a function of ``source`` that carries no reason comment."""
    lines = source.splitlines()
    found = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and not _has_reason(lines, node.lineno):
                    found.add((node.lineno, lines[node.lineno - 1].strip()))
    return [f"{name}:{n}: {text}" for n, text in sorted(found)]


def test_every_import_inside_a_function_says_why():
    """Imports sit at module top; one inside a function (a heavy or optional package, a fast `relaxrl --help`,
    a circular import) carries a one-line comment with its reason, on its line or above its block."""
    bad = []
    for d in IMPORT_RULE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            bad += unexplained_function_imports(path.read_text(), str(path.relative_to(ROOT)))
    assert not bad, "imports inside functions without a reason comment:\n" + "\n".join(bad)


def test_the_import_rule_finds_an_unexplained_import():
    """The check above can fail: a bare import in a function is reported; a reasoned one, or one at the top, is not."""
    source = """import os


def f():
    import json

    # matplotlib is heavy: only the plots need it
    import matplotlib
    import matplotlib.pyplot as plt

    try:
        import torch
    except ImportError:
        torch = None
    import re  # only this function parses


def g():
    # optional package
    try:
        import pyxtal
    except ImportError:
        pyxtal = None
"""
    assert unexplained_function_imports(source, "m.py") == ["m.py:5: import json", "m.py:12: import torch"]


# Long functions: none over 60 lines outside bench/ (measurement scripts) and the dashboard builder (a table of
# panels). Tests count: a long test is split into named steps like any other function.
MAX_FUNCTION_LINES = 60
LENGTH_RULE_DIRS = ("common", "actors", "learner", "replay_service", "relaxrl", "deploy", "tests")
LENGTH_RULE_EXEMPT = ("deploy/grafana/make_dashboard.py",)


def long_functions(source: str, name: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name:line: function (n lines)`` for each function of ``source`` longer than ``limit`` lines (def to end)."""
    return [f"{name}:{node.lineno}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > limit]


def test_no_function_is_over_60_lines():
    bad = []
    for d in LENGTH_RULE_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel not in LENGTH_RULE_EXEMPT:
                bad += long_functions(path.read_text(), rel)
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines (split them into named pieces):\n" + "\n".join(bad)


def test_the_length_rule_finds_a_long_function():
    """The check above can fail: a 61-line function is reported, a 60-line one and the lines around it are not."""
    lines = "".join(f"        x{i} = {i}\n" for i in range(59))
    source = f"import os\n\n\nclass A:\n    def short(self):\n{lines}\n    def long(self):\n{lines}        return 1\n"
    assert long_functions(source, "m.py") == ["m.py:66: long (61 lines)"]
