"""The run configuration: TOML presets, overrides, and errors that name the key."""
from __future__ import annotations

import pytest

from relaxrl.cli import main
from common.config import ConfigError, RunConfig, dump_config, field_docs, load_config
from common.config import LearnerConfig


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


def test_cross_field_check():
    with pytest.raises(ConfigError, match="env_input_dim"):
        load_config(None, ["env.env_input_dim=2"])


def test_roundtrip(tmp_path):
    cfg = load_config("configs/demo.toml", ["learner.batch_size=7"])
    dump_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg


def test_every_field_documented():
    from common.config import SECTIONS
    import dataclasses

    for cls in SECTIONS.values():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__} fields without docstring: {missing}"
    assert "Discount" in field_docs(LearnerConfig)["gamma"]


def test_cli_reports_config_error_without_traceback(capsys):
    assert main(["config", "show", "--set", "learner.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "learner.nope" in err and "Traceback" not in err
