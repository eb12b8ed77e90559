"""`relaxrl relax`: CIF, POSCAR and extxyz in, relaxed structure out; bad input is one clear line and exit 2."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.cluster import Octahedron
from ase.constraints import FixAtoms
from ase.io import read, write

from common.config import load_config
from learner.policy import Policy, save_policy
from relaxrl.cli import main

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"(NOT )?converged in (\d+) steps.*, (\d+) force calls, final Fmax ([\d.]+) eV/Å.*energy change ([-+][\d.]+) eV")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A policy that stands still (zero output head): it stalls, so --hybrid hands over, and it never wrecks a structure."""
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    torch.manual_seed(0)
    actor = Policy(cfg).actor
    with torch.no_grad():
        actor.head.weight.zero_()
    return save_policy(tmp_path_factory.mktemp("run"), cfg, actor)


@pytest.fixture(scope="module")
def wrecking_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised policy: on these structures it raises the energy by tens of eV within a few steps,
    as a checkpoint trained on another configuration does."""
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


# ----------------------------------------------------------------------------- constraints, frames, disorder


def fixed_slab():
    """A rattled Cu(111) slab whose bottom layer is fixed (FixAtoms)."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.info.clear()
    slab.rattle(0.1, seed=2)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    return slab


@pytest.mark.parametrize("src_name, src_fmt, out_name", [("slab.extxyz", "extxyz", "relaxed.extxyz"),
                                                         ("POSCAR", "vasp", "CONTCAR")])
def test_fixed_atoms_stay_fixed_and_the_written_file_keeps_the_constraint(tmp_path, checkpoint, capsys,
                                                                          src_name, src_fmt, out_name):
    slab = fixed_slab()
    src, out, traj = tmp_path / src_name, tmp_path / out_name, tmp_path / "relax.traj"
    write(src, slab, format=src_fmt)
    start = read(src, format=src_fmt).positions  # as the file stores them (POSCAR rounds)
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "40", "--hybrid", "3",
               "--out", str(out), "--trajectory", str(traj)])
    assert rc == 0
    assert SUMMARY.search(capsys.readouterr().out)
    frames = read(traj, index=":")
    assert len(frames) > 2
    for frame in frames:  # every step: the fixed atoms did not move at all
        np.testing.assert_array_equal(frame.positions[:4], start[:4])
    assert np.abs(frames[-1].positions[4:] - start[4:]).max() > 1e-3  # the free atoms did
    relaxed = read(out, format="vasp" if out_name == "CONTCAR" else None)
    assert [type(c).__name__ for c in relaxed.constraints] == ["FixAtoms"]
    assert list(relaxed.constraints[0].index) == [0, 1, 2, 3]
    np.testing.assert_allclose(relaxed.positions[:4], start[:4], atol=1e-9)


def test_cif_output_says_it_drops_the_constraint(tmp_path, checkpoint, capsys):
    src = tmp_path / "slab.extxyz"
    write(src, fixed_slab())
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2", "--out",
                 str(tmp_path / "out.cif")]) == 0
    assert "out.cif is a CIF, which cannot store the input's constraints (FixAtoms)" in capsys.readouterr().err


def test_multi_frame_input_needs_index(tmp_path, checkpoint, capsys):
    src = tmp_path / "frames.extxyz"
    cluster = Octahedron("Ag", 2)
    cluster.rattle(0.1, seed=1)
    write(src, [rattled_cu(), cluster])
    out = tmp_path / "out.extxyz"
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "frames.extxyz holds 2 frames" in err and "--index N" in err and "Traceback" not in err
    assert not out.exists()
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--index", "-1", "--steps", "2",
                 "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("frames.extxyz#1: ")
    assert read(out).get_chemical_formula() == "Ag6"
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--index", "5", "--out", str(out)]) == 2
    assert "index 5 is out of range" in capsys.readouterr().err


def test_partial_occupancy_cif_is_refused(tmp_path, checkpoint, capsys):
    rows = "".join(f"{el}{k} {el} {x} {y} {z} 0.5\n" for k, (x, y, z) in enumerate(
        [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]) for el in ("Cu", "Au"))
    src = tmp_path / "CuAu.cif"
    src.write_text("data_CuAu\n_cell_length_a 3.8\n_cell_length_b 3.8\n_cell_length_c 3.8\n_cell_angle_alpha 90\n"
                   "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
                   "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
                   "_atom_site_fract_z\n_atom_site_occupancy\n" + rows)
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out.cif")])
    err = capsys.readouterr().err
    assert rc == 2 and "CuAu.cif has partial occupancies" in err and "Traceback" not in err
    assert not (tmp_path / "out.cif").exists()


# ----------------------------------------------------------------------------- refused before any work


def _unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in: a read-only one, or /sys when running as root."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    for d in (ro, Path("/sys")):
        try:
            probe = d / ".probe"
            probe.write_text("")
            probe.unlink()
        except OSError:
            return d
    pytest.skip("no unwritable directory on this machine")


@pytest.mark.parametrize("case", ["read-only", "unknown suffix", "directory", "no suffix", "missing directory"])
def test_bad_out_is_refused_before_the_relaxation(tmp_path, checkpoint, capsys, case):
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    out, message = {
        "read-only": (_unwritable_dir(tmp_path) / "relaxed.cif", "cannot be written"),
        "unknown suffix": (tmp_path / "relaxed.foo", "ASE cannot write a structure format named like this"),
        "directory": (tmp_path, "is a directory; give a file name"),
        "no suffix": (tmp_path / "relaxed", "ASE cannot write a structure format named like this"),
        "missing directory": (tmp_path / "nope" / "relaxed.cif", "directory " + str(tmp_path / "nope") + " does not exist"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("relaxrl relax: error: --out") and message in captured.err, captured.err
    assert captured.out == ""  # no summary line: nothing was relaxed
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_default_out_never_overwrites_relaxed_cif(tmp_path, checkpoint, capsys, monkeypatch):
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    monkeypatch.chdir(tmp_path)
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2"]) == 0
    first = (tmp_path / "relaxed.cif").read_bytes()
    capsys.readouterr()
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2"]) == 2
    captured = capsys.readouterr()
    assert "relaxed.cif already exists and no --out was given; pass --out PATH" in captured.err
    assert captured.out == ""
    assert (tmp_path / "relaxed.cif").read_bytes() == first
    # an explicit --out is overwritten
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "3", "--out", "relaxed.cif"]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--fmax", "inf"], "--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got inf"),
    (["--fmax", "nan"], "--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got nan"),
    (["--fmax", "0"], "--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got 0.0"),
    (["--fmax", "-0.05"], "--fmax must be a finite force threshold > 0 eV/Å (e.g. 0.05), got -0.05"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "-3"], "--steps must be at least 1"),
    (["--hybrid", "-1"], "--hybrid must be >= 0"),
    (["--trajectory", "missing-dir/relax.traj"], "--trajectory missing-dir/relax.traj: directory missing-dir does not exist"),
    (["--trajectory", "out.extxyz"], "--trajectory and --out are the same file"),
])
def test_bad_settings_are_refused_before_the_relaxation(tmp_path, checkpoint, capsys, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in.extxyz", rattled_cu())
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["relax", "in.extxyz", "--checkpoint", str(checkpoint), "--out", "out.extxyz", *flags])
    captured = capsys.readouterr()
    assert rc == 2 and message in captured.err and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_settings_through_the_installed_entry_point(tmp_path, checkpoint):
    write(tmp_path / "in.extxyz", rattled_cu())
    exe = Path(sys.executable).with_name("relaxrl")
    proc = subprocess.run([str(exe), "relax", str(tmp_path / "in.extxyz"), "--checkpoint", str(checkpoint),
                           "--fmax", "inf", "--out", str(tmp_path / "out.cif")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("relaxrl relax: error: --fmax must be a finite force threshold > 0 eV/Å "
                                   "(e.g. 0.05), got inf")
    assert not (tmp_path / "out.cif").exists()


# ----------------------------------------------------------------------------- issue 14: bad input fails fast, never silently wrong


def _broken_checkpoints(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """Files given as --checkpoint that are not (complete) checkpoints, each with the text its error must hold."""
    data = torch.load(checkpoint, weights_only=True)
    cases: dict[str, tuple[Path, str]] = {}

    def variant(name: str, **changes) -> Path:
        path = tmp_path / f"{name}.pt"
        torch.save({**{k: v for k, v in data.items() if k not in changes or changes[k] is not None},
                    **{k: v for k, v in changes.items() if v is not None}}, path)
        return path

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    cases["0-byte file"] = (empty, "is empty (0 bytes)")
    cases["no actor entry"] = (variant("no-actor", actor=None), "has no 'actor' entry")
    cases["counters a list"] = (variant("counters-list", counters=[1, 2]), "'counters' entry is a list, not a dict")
    cases["counter not a number"] = (variant("counters-text", counters={"updates": "x"}),
                                     "counter 'updates' is 'x', not a non-negative integer")
    cases["actor not tensors"] = (variant("actor-text", actor={"w": "x"}), "not tensors (entry 'w')")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ckpt-00000001.pt").write_bytes(checkpoint.read_bytes())
    (run / "config.toml").write_text((ROOT / "configs" / "demo.toml").read_text())
    cases["config.toml"] = (run / "config.toml", f"is a config file, not a relaxrl checkpoint ({run} is a run directory")
    return cases


@pytest.mark.parametrize("command", ["relax", "eval"])
@pytest.mark.parametrize("case", ["0-byte file", "no actor entry", "counters a list", "counter not a number",
                                  "actor not tensors", "config.toml"])
def test_a_broken_or_foreign_checkpoint_is_one_line_naming_the_file(tmp_path, checkpoint, capsys, command, case):
    path, message = _broken_checkpoints(tmp_path, checkpoint)[case]
    before = path.read_bytes()
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    out = tmp_path / ("out.cif" if command == "relax" else "eval-out")
    argv = ([str(src), "--checkpoint", str(path)] if command == "relax"
            else ["--checkpoint", str(path), "--structures", str(tmp_path), "--no-progress"])
    rc = main([command, *argv, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith(f"relaxrl {command}: error:") and captured.err.count("\n") == 1, captured.err
    assert str(path) in captured.err and message in captured.err, captured.err
    assert "runs/NAME/checkpoints/ckpt-NNNNNNNN.pt" in captured.err  # what a checkpoint is and where it lives
    assert "Traceback" not in captured.err and "weights_only" not in captured.err
    assert not out.exists() and path.read_bytes() == before


def test_a_checkpoint_that_wrecks_the_structure_is_stopped_and_nothing_is_written(tmp_path, wrecking_checkpoint,
                                                                                   capsys):
    """The policy raises the energy far above the start: one line, exit 2, no output; --hybrid gives BFGS's result."""
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    before = src.read_bytes()
    out = tmp_path / "out.extxyz"
    rc = main(["relax", str(src), "--checkpoint", str(wrecking_checkpoint), "--steps", "200", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(r"relaxrl relax: error: in\.extxyz: the policy raised the energy of Cu8 by [\d.]+ eV .* more than "
                     r"the 4 eV allowed .*--hybrid K\); nothing was written to .*out\.extxyz$", captured.err.strip())
    assert not out.exists() and src.read_bytes() == before
    # with --hybrid, BFGS takes over from the start and the result is BFGS's minimum
    assert main(["relax", str(src), "--checkpoint", str(wrecking_checkpoint), "--hybrid", "5", "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert " converged" in line and "so BFGS went on from the start" in line, line
    assert float(SUMMARY.search(line).group(5)) < 0  # the energy went down, not up by tens of eV


@pytest.mark.parametrize("calculator, kwargs, missing", [
    ("ase.calculators.lj:LennardJones", None, "missing sigma (default 1.0), epsilon (default 1.0)"),
    ("ase.calculators.lj.LennardJones", '{"sigma": 2.3}', "missing epsilon (default 1.0)"),
    ("ase.calculators.morse:MorsePotential", '{"epsilon": 0.3}', "missing r0 (default 1.0), rho0 (default 6.0)"),
])
def test_pair_potentials_with_placeholder_defaults_need_their_parameters(tmp_path, checkpoint, capsys, calculator,
                                                                         kwargs, missing):
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    flags = ["--calculator", calculator] + (["--calculator-kwargs", kwargs] if kwargs else [])
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), *flags, "--out", str(tmp_path / "out.cif")])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and "Traceback" not in captured.err
    assert f"calculator '{calculator}' needs" in captured.err and f"in --calculator-kwargs; {missing}" in captured.err
    assert "env.calculator" not in captured.err  # relax's own option is named, not a config key
    assert not (tmp_path / "out.cif").exists()
    # with the parameters given explicitly it runs
    given = '{"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}' if "lj" in calculator else '{"epsilon": 0.3, "r0": 2.5, "rho0": 6}'
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--calculator", calculator,
                 "--calculator-kwargs", given, "--steps", "2", "--out", str(tmp_path / "out.cif")]) == 0


def test_an_element_the_calculator_lacks_names_the_relax_flag(tmp_path, checkpoint, capsys):
    src = tmp_path / "si.extxyz"
    write(src, bulk("Si"))
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out.cif")]) == 2
    err = capsys.readouterr().err
    assert "contains Si, which the 'emt' calculator does not handle" in err
    assert err.strip().endswith("choose another calculator with --calculator") and "env.calculator" not in err, err


# ----------------------------------------------------------------------------- issue 27: nothing overwritten the user did not name


def _output_cases(tmp_path: Path, checkpoint: Path) -> dict[str, tuple[list[str], str]]:
    """Flags naming an input, each other, a dangling link or a picture; each with the text its error must hold."""
    (tmp_path / "dangling.extxyz").symlink_to(tmp_path / "nowhere" / "x.extxyz")
    write(tmp_path / "out.extxyz", rattled_cu())  # an earlier result, and a second name for it
    (tmp_path / "alias.extxyz").symlink_to(tmp_path / "out.extxyz")
    run_dir = checkpoint.parent.parent
    return {
        "trajectory is the input": (["--out", "out.extxyz", "--trajectory", "in.extxyz"],
                                    "--trajectory in.extxyz is the input structure"),
        "out is the input": (["--out", "in.extxyz"], "--out in.extxyz is the input structure"),
        "trajectory is the checkpoint": (["--out", "out.extxyz", "--trajectory", str(checkpoint)],
                                         "is the checkpoint in use"),
        "trajectory is the run's config.toml": (["--out", "out.extxyz", "--trajectory", str(run_dir / "config.toml")],
                                                "config.toml of the checkpoint's run"),
        "the same file through a link": (["--out", "out.extxyz", "--trajectory", "alias.extxyz"],
                                         "--trajectory and --out are the same file"),
        "dangling link as out": (["--out", "dangling.extxyz"], "is a symbolic link to"),
        "dangling link as trajectory": (["--out", "out.extxyz", "--trajectory", "dangling.extxyz"],
                                        "--trajectory dangling.extxyz is a symbolic link to"),
        "a picture as out": (["--out", "out.png"], "cannot be read back, so the relaxed coordinates would be lost"),
    }


@pytest.mark.parametrize("case", ["trajectory is the input", "out is the input", "trajectory is the checkpoint",
                                  "trajectory is the run's config.toml", "the same file through a link",
                                  "dangling link as out", "dangling link as trajectory", "a picture as out"])
def test_outputs_never_overwrite_an_input_and_are_checked_before_the_work(tmp_path, checkpoint, capsys, monkeypatch,
                                                                          case):
    checkpoint_source = checkpoint
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "in.extxyz", rattled_cu())
    run_dir = tmp_path / "run"  # a run directory of its own: config.toml and the checkpoint
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml").write_text("# the run's config\n")
    checkpoint = run_dir / "checkpoints" / checkpoint.name
    checkpoint.write_bytes(checkpoint_source.read_bytes())
    flags, message = _output_cases(tmp_path, checkpoint)[case]
    guarded = [tmp_path / "in.extxyz", checkpoint, run_dir / "config.toml"]
    before = [p.read_bytes() for p in guarded]
    listing = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["relax", "in.extxyz", "--checkpoint", str(checkpoint), "--steps", "3", *flags])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "", captured
    assert captured.err.startswith("relaxrl relax: error:") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and "Traceback" not in captured.err, captured.err
    assert [p.read_bytes() for p in guarded] == before  # nothing overwritten
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # nothing written: refused before the work


def test_keeps_constraints_lists_the_formats_that_give_them_back():
    """relax.KEEPS_CONSTRAINTS is what ASE really round-trips; a format outside it (pdb, cif) loses FixAtoms."""
    from relaxrl.relax import KEEPS_CONSTRAINTS

    slab = fixed_slab()
    for fmt in ("extxyz", "vasp", "traj", "json", "proteindatabank", "cif"):
        path = Path(pytest.importorskip("tempfile").mkdtemp()) / f"x.{fmt}"
        write(path, slab, format=fmt)
        kept = bool(read(path, format=fmt).constraints)
        assert kept == (fmt in KEEPS_CONSTRAINTS), fmt


def test_a_format_that_drops_constraints_says_so(tmp_path, checkpoint, capsys):
    src = tmp_path / "slab.extxyz"
    write(src, fixed_slab())
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2", "--out",
                 str(tmp_path / "out.pdb")]) == 0
    assert "out.pdb is in the 'proteindatabank' format, which cannot store the input's constraints (FixAtoms)" \
        in capsys.readouterr().err
    assert main(["relax", str(src), "--checkpoint", str(checkpoint), "--steps", "2", "--out",
                 str(tmp_path / "out.extxyz")]) == 0
    assert "cannot store" not in capsys.readouterr().err


@pytest.mark.parametrize("calculator, kwargs, message", [
    ("emt", '{"cutoff": 6.0}', "calculator 'emt' does not take --calculator-kwargs cutoff"),
    ("ase.calculators.lj:LennardJones", '{"sigma": -2.3, "epsilon": 0.01}', "--calculator-kwargs sigma = -2.3 must be"),
])
def test_calculator_kwargs_that_would_be_ignored_or_are_nonsense_are_one_line(tmp_path, checkpoint, capsys,
                                                                              calculator, kwargs, message):
    src = tmp_path / "in.extxyz"
    write(src, rattled_cu())
    rc = main(["relax", str(src), "--checkpoint", str(checkpoint), "--calculator", calculator,
               "--calculator-kwargs", kwargs, "--out", str(tmp_path / "out.cif")])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == "" and captured.err.count("\n") == 1 and message in captured.err, captured.err
    assert not (tmp_path / "out.cif").exists()
