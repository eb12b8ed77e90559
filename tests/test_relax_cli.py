"""`relaxrl relax`: CIF, POSCAR and extxyz in, relaxed structure out; bad input is one clear line and exit 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.cluster import Octahedron
from ase.io import read, write

from learner.policy import Policy, save_policy
from relaxrl.cli import main
from common.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(NOT )?converged in (\d+) steps.*, (\d+) force calls, final Fmax ([\d.]+) eV/Å.*energy change ([-+][\d.]+) eV")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    torch.manual_seed(0)
    return save_policy(tmp_path_factory.mktemp("run"), cfg, Policy(cfg).actor)


def rattled_cu():
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)  # 8 atoms
    atoms.rattle(0.08, seed=7)
    return atoms


@pytest.mark.parametrize("filename, fmt", [("in.cif", "cif"), ("POSCAR", "vasp"), ("in.extxyz", "extxyz")])
def test_relax_reads_writes_and_summarises(tmp_path, checkpoint, capsys, filename, fmt):
    src = tmp_path / filename
    write(src, rattled_cu(), format=fmt)
    out = tmp_path / "relaxed.cif"
    traj = tmp_path / "relax.traj"
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--fmax", "0.05", "--steps", "150",
               "--hybrid", "3", "--out", str(out), "--trajectory", str(traj)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = SUMMARY.search(line)
    assert m, line
    assert m.group(1) is None, line  # the untrained policy stalls, BFGS takes over and converges
    assert "rl 3 + bfgs" in line
    relaxed = read(out)
    assert len(relaxed) == 8 and relaxed.get_chemical_formula() == "Cu8"
    frames = read(traj, index=":")
    assert len(frames) == int(m.group(2)) + 1
    d = frames[-1].get_scaled_positions(wrap=False) - relaxed.get_scaled_positions(wrap=False)
    np.testing.assert_allclose(d - np.round(d), 0.0, atol=1e-5)  # same atoms, up to wrapping (CIF wraps)
    assert np.linalg.norm(frames[-1].get_forces(), axis=1).max() == pytest.approx(float(m.group(4)), abs=1e-4)


def test_relax_cluster_not_converged_is_said(tmp_path, checkpoint, capsys):
    src = tmp_path / "cluster.xyz"
    cluster = Octahedron("Ag", 2)
    cluster.rattle(0.1, seed=1)
    write(src, cluster, format="extxyz")
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2", "--out",
                 str(tmp_path / "out.xyz")]) == 0
    line = capsys.readouterr().out
    assert "NOT converged in 2 steps" in line
    assert len(read(tmp_path / "out.xyz")) == 6


def test_relax_through_the_installed_entry_point(tmp_path, checkpoint):
    src = tmp_path / "POSCAR"
    write(src, rattled_cu(), format="vasp")
    exe = Path(sys.executable).with_name("relaxrl")
    proc = subprocess.run([str(exe), "relax", str(src), "--checkpoint", str(checkpoint.parent.parent),
                           "--hybrid", "3", "--out", str(tmp_path / "CONTCAR")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert SUMMARY.search(proc.stdout) and " converged" in proc.stdout
    assert len(read(tmp_path / "CONTCAR", format="vasp")) == 8


def _bad_inputs(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    good = tmp_path / "good.extxyz"
    write(good, rattled_cu())
    garbage = tmp_path / "broken.cif"
    garbage.write_text("data_broken\n_cell_length_a 3.6\nthis is not a cif loop\n")
    iron = tmp_path / "iron.cif"
    write(iron, bulk("Fe"), format="cif")
    # A checkpoint whose weights do not fit its config (trained with 8 channels, config says 16).
    small = load_config(None, ["network.channels=8", "network.num_layers=2"])
    big = load_config(None, ["network.channels=16", "network.num_layers=2"])
    incompatible = save_policy(tmp_path / "other-run", big, Policy(small).actor)
    return {
        "missing checkpoint": ([str(good), "--checkpoint", str(tmp_path / "nope.pt")], "does not exist"),
        "incompatible checkpoint": ([str(good), "--checkpoint", str(incompatible)], "do not fit"),
        "unreadable structure": ([str(garbage), "--checkpoint", str(checkpoint)], "cannot be read"),
        "missing structure": ([str(tmp_path / "none.cif"), "--checkpoint", str(checkpoint)], "does not exist"),
        "unsupported element": ([str(iron), "--checkpoint", str(checkpoint)], "Fe, which the 'emt' calculator does not handle"),
        "bad calculator": ([str(good), "--checkpoint", str(checkpoint), "--calculator", "nosuch:Calc"], "cannot be imported"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "incompatible checkpoint", "unreadable structure",
                                  "missing structure", "unsupported element", "bad calculator"])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, checkpoint, capsys, case):
    argv, message = _bad_inputs(tmp_path, checkpoint)[case]
    rc = main(["relax", *argv, "--out", str(tmp_path / "out.cif")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("relaxrl relax: error:") and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out.cif").exists()
