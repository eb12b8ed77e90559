"""The run configuration: TOML presets, overrides, and errors that name the key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.config import ConfigError, LearnerConfig, RunConfig, dump_config, field_docs, load_config
from helpers import cu_cluster, observe
from relaxrl.cli import main


def test_presets_load():
    for name in ("demo", "tiny"):
        cfg = load_config(f"configs/{name}.toml")
        assert isinstance(cfg, RunConfig) and cfg.run.name == name


def test_override_parses_toml_values():
    cfg = load_config(None, ["learner.actor_lr=1e-4", "curriculum.stages=[4, 8]", "env.calculator=emt"])
    assert cfg.learner.actor_lr == 1e-4
    assert cfg.curriculum.stages == (4, 8)
    assert cfg.env.calculator == "emt"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["learner.actor_lrr=1e-4"])
    assert "learner.actor_lrr" in str(e.value) and "actor_lr" in str(e.value) and "critic_lr" in str(e.value)


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[lerner]\nbatch_size = 3\n")
    with pytest.raises(ConfigError, match="unknown section.*lerner.*Valid sections"):
        load_config(p)


@pytest.mark.parametrize("override", ["learner.batch_size=1.5", "learner.gamma='x'", "env.max_steps=true"])
def test_wrong_type(override):
    with pytest.raises(ConfigError, match="must be of type"):
        load_config(None, [override])


def test_int_widens_to_float():
    assert load_config(None, ["learner.gamma=1"]).learner.gamma == 1.0


@pytest.mark.parametrize("override,match", [
    ("env.env_input_dim=4", "env.env_input_dim must be 0..3"),
    ("network.num_layers=1", "network.num_layers must be 2..6"),
    ("network.dtype='float16'", "network.dtype must be 'float32' or 'float64'"),
    ("expert.schedule='cosine'", "expert.schedule must be 'linear' or 'exponential'"),
    ("curriculum.stages=[8, 4]", "curriculum.stages must be a non-empty increasing list"),
    ("learner.expert_fraction_end=1.5", r"learner.expert_fraction_end must be within \[0, 1\]"),
    ("env.reference_tolerance=-1.0", "env.reference_tolerance must be a finite tolerance >= 0 in meV/atom"),
])
def test_out_of_range_value_names_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


@pytest.mark.parametrize("old,new", [("network.max_step", "env.max_step"), ("expert.maxstep", "env.max_step"),
                                     ("network.env_input_dim", "env.env_input_dim")])
def test_removed_key_names_its_new_home(tmp_path, old, new):
    """One home per setting: the keys of earlier versions are errors that say where the setting lives now."""
    with pytest.raises(ConfigError, match=f"{old} was removed: set {new}"):
        load_config(None, [f"{old}=0.2" if "step" in old else f"{old}=0"])
    section, key = old.split(".")
    p = tmp_path / "old.toml"
    p.write_text(f"[{section}]\n{key} = 1\n")
    with pytest.raises(ConfigError, match=f"{old} was removed: set {new}"):
        load_config(p)


@pytest.mark.parametrize("old,new,value", [("expert.newton_max_atoms", "expert.teacher_max_atoms", 7),
                                           ("expert.newton_min_curvature", "expert.teacher_min_curvature", 3.5)])
def test_renamed_key_keeps_working_under_its_new_name_with_a_warning(tmp_path, caplog, old, new, value):
    """Teacher-neutral names: the expert.newton_* keys of earlier files, overrides and checkpoints still set the
    teacher_* keys; a file or override gets one warning naming the new key, a checkpoint none."""
    from learner.policy import upgrade_checkpoint_config

    section, key = old.split(".")
    new_key = new.split(".")[1]
    p = tmp_path / "old.toml"
    p.write_text(f"[{section}]\n{key} = {value}\n")
    for cfg in (load_config(p), load_config(None, [f"{old}={value}"])):
        assert getattr(cfg.expert, new_key) == value
    warnings = [r.getMessage() for r in caplog.records if r.name == "relaxrl.config"]
    assert len(warnings) == 2 and all(f"{old} is now called {new}" in w for w in warnings)
    with pytest.raises(ConfigError, match=f"{old} and {new} are both set"):
        load_config(p, [f"{new}={value}"])
    caplog.clear()
    assert upgrade_checkpoint_config({section: {key: value}}) == {section: {new_key: value}}
    assert not caplog.records


def test_every_preset_uses_the_current_key_names(caplog):
    """The presets in configs/ load without a renamed-key warning."""
    for preset in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")):
        load_config(preset)
    assert not [r for r in caplog.records if r.name == "relaxrl.config"]


def test_dropped_setting_is_an_error_in_a_file_and_dropped_from_checkpoints(tmp_path):
    from learner.policy import upgrade_checkpoint_config

    with pytest.raises(ConfigError, match="network.per_atom_q was removed: the per-atom critic values were never used"):
        load_config(None, ["network.per_atom_q=true"])
    old = {"network": {"per_atom_q": False, "channels": 4}}
    assert upgrade_checkpoint_config(old) == {"network": {"channels": 4}}


def test_old_checkpoint_config_still_loads(tmp_path):
    """A checkpoint saved before the keys moved stores them in its config dict: load_policy translates them."""
    import torch

    from common.config import to_dict
    from learner.checkpoint import save_checkpoint
    from learner.policy import Policy, load_policy

    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "env.env_input_dim=2", "env.max_step=0.15"])
    old = to_dict(cfg)
    old["network"].update(max_step=0.15, env_input_dim=2)
    old["expert"]["maxstep"] = 0.15
    torch.manual_seed(0)
    policy = Policy(cfg)
    save_checkpoint(tmp_path, 3, {"config": old, "actor": policy.actor.state_dict(), "counters": {"updates": 3}})
    loaded = load_policy(tmp_path)
    assert loaded.config == cfg and loaded.version == 3
    obs = observe(cu_cluster(4, seed=0), np.array([0.5, 0.1]))
    np.testing.assert_array_equal(loaded.act(obs), policy.act(obs))


def test_roundtrip(tmp_path):
    cfg = load_config("configs/demo.toml", ["learner.batch_size=7"])
    dump_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg


def test_every_field_documented():
    import dataclasses

    from common.config import SECTIONS

    for cls in SECTIONS.values():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without docstring: {missing}"
    assert "Discount" in field_docs(LearnerConfig)["gamma"]


def test_cli_reports_config_error_without_traceback(capsys):
    assert main(["config", "show", "--set", "learner.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "learner.nope" in err and "Traceback" not in err


def test_config_show_into_a_closed_pipe_exits_quietly():
    """`relaxrl config show --docs | head -1`: the reader goes away; no BrokenPipeError traceback, SIGPIPE's status."""
    exe = Path(sys.executable).with_name("relaxrl")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(f"'{exe}' config show --docs | head -1; echo \"status ${{PIPESTATUS[0]}}\"", shell=True,
                          executable="/bin/bash", capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.stdout.splitlines() == ["[run]", "status 141"], proc.stdout
    assert proc.stderr == ""


def test_the_default_preset_is_found_outside_the_repository(tmp_path):
    """`relaxrl config show --docs` and `relaxrl train` without --config, run from another directory, use the
    demo preset shipped in the package (they failed on configs/demo.toml before); it is the repository's preset."""
    from relaxrl.cli import DEFAULT_CONFIG

    root = Path(__file__).resolve().parents[1]
    assert Path(DEFAULT_CONFIG).read_bytes() == (root / "configs" / "demo.toml").read_bytes()
    exe = str(Path(sys.executable).with_name("relaxrl"))
    docs = subprocess.run([exe, "config", "show", "--docs"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert docs.returncode == 0 and docs.stdout.startswith("[run]\n") and docs.stderr == "", docs.stderr
    shown = subprocess.run([exe, "config", "show"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and 'name = "demo"' in shown.stdout
    # a new run without --config reads the preset (refused here for a value, before anything starts)
    train = subprocess.run([exe, "train", "--set", "env.max_steps=0", "--no-progress"], capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert train.returncode == 2 and "env.max_steps must be at least 1" in train.stderr, train.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, message", [
    ("directory", "is a directory, not a file"),
    ("binary", "is not a TOML text file (a checkpoint or a binary file?)"),
])
def test_a_config_path_that_is_not_a_toml_file_is_one_line(tmp_path, capsys, case, message):
    path = tmp_path
    if case == "binary":
        path = tmp_path / "ckpt-00000001.pt"
        path.write_bytes(b"PK\x03\x04\x80\x02\xff\xfe")
    for argv in (["config", "show", "--config", str(path)], ["eval", "--config", str(path), "--optimizers", "bfgs",
                                                              "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"config file {path} {message}" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
