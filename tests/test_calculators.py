"""Calculators by name: EMT, CHGNet (real model, shipped weights), any ASE class; elements; the model cache."""
from __future__ import annotations

import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from actors.calculators import (
    CalculatorError,
    calculator_elements,
    clear_model_cache,
    make_calculator,
    model_cache_info,
    resolve_calculator,
)
from actors.curriculum import load_structures
from actors.env import RelaxEnv, compute_reward, force_stats
from actors.structure_check import StructureError, check_structure
from common.config import CurriculumConfig, EnvConfig

pytest.importorskip("chgnet", reason='CHGNet tests need the mlip extra: pip install -e ".[mlip]" -c constraints.txt')

CPU = {"device": "cpu"}


def alfe_b2() -> Atoms:
    """B2 (CsCl) FeAl, 2 atoms, slightly off its minimum."""
    atoms = bulk("FeAl", "cesiumchloride", a=2.90)
    atoms.positions[1] += [0.05, -0.03, 0.02]
    return atoms


# ----------------------------------------------------------------------------- names and errors


@pytest.mark.parametrize("name, message", [
    ("nonsense", "not one of emt, chgnet nor 'module:Class'"),
    ("nosuchmodule:Calc", "cannot be imported"),
    ("ase.calculators.emt:NoSuchClass", "cannot be imported"),
])
def test_bad_calculator_names_say_what_to_set(name, message):
    with pytest.raises(CalculatorError, match=message) as e:
        make_calculator(name)
    assert "\n" not in str(e.value) and "env.calculator" in str(e.value)


def test_chgnet_rejects_unknown_kwargs_and_models_listing_the_valid_ones():
    with pytest.raises(CalculatorError, match="unknown env.calculator_kwargs use_gpu; valid: model_name"):
        make_calculator("chgnet", {"use_gpu": True})
    with pytest.raises(CalculatorError, match="ships 0.3.0, 0.2.0, r2scan"):
        make_calculator("chgnet", {"model_name": "9.9.9", "device": "cpu"})


def test_chgnet_without_the_extra_says_what_to_install(monkeypatch):
    # the package absent, as on an install without the mlip extra (None in sys.modules makes the import fail)
    for mod in [m for m in sys.modules if m == "chgnet" or m.startswith("chgnet.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "chgnet", None)
    with pytest.raises(CalculatorError) as e:
        make_calculator("chgnet", CPU)
    assert "\n" not in str(e.value)
    assert 'pip install -e ".[mlip]"' in str(e.value)


def test_any_ase_calculator_class_by_module_path():
    calc = make_calculator("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.01})
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 2.5]])
    atoms.calc = calc
    assert np.isfinite(atoms.get_forces()).all()


# ----------------------------------------------------------------------------- elements


def test_structures_are_checked_against_the_configured_calculators_elements(tmp_path):
    si = bulk("Si", "diamond", a=5.43)
    fe = bulk("Fe", "bcc", a=2.87)
    assert {"Al", "Fe", "Si", "H", "Pu"} <= calculator_elements("chgnet")
    assert calculator_elements("ase.calculators.lj:LennardJones") is None  # says nothing: not checked
    for atoms in (si, fe):
        check_structure(atoms, calculator="chgnet")
        check_structure(atoms, calculator="ase.calculators.lj:LennardJones")
        with pytest.raises(StructureError, match="which the 'emt' calculator does not handle"):
            check_structure(atoms, calculator="emt")
    # a structure directory as `relaxrl train` loads it with env.calculator = "chgnet"
    for i, atoms in enumerate((si, fe, si.repeat((2, 1, 1)), fe.repeat((2, 1, 1)))):
        atoms.write(tmp_path / f"POSCAR_{i}", format="vasp")
    train, held = load_structures(tmp_path, CurriculumConfig(heldout_fraction=0.25), 0, calculator="chgnet")
    assert len(train) + len(held) == 4
    with pytest.raises(StructureError, match="Si"):
        load_structures(tmp_path, CurriculumConfig(), 0, calculator="emt")


def test_a_calculator_may_declare_its_elements():
    calc = make_calculator("emt")
    assert calculator_elements(calc) == calculator_elements("emt")
    calc.supported_elements = ("Cu",)
    assert calculator_elements(calc) == frozenset({"Cu"})


def test_relax_and_eval_take_the_checkpoints_calculator_unless_told():
    env = SimpleNamespace(calculator="chgnet", calculator_kwargs={"model_name": "0.3.0", "device": "cpu"})
    assert resolve_calculator(None, None, env) == ("chgnet", {"model_name": "0.3.0", "device": "cpu"})
    assert resolve_calculator("emt", None, env) == ("emt", {})
    assert resolve_calculator(None, '{"device": "cuda"}', env) == ("chgnet", {"device": "cuda"})
    with pytest.raises(CalculatorError, match="--calculator-kwargs"):
        resolve_calculator(None, "{device: cuda}", env)


def test_a_calculator_from_a_checkpoint_is_used_only_when_built_in_or_trusted():
    """What a checkpoint names is data: a module:Class there is never imported unless the user names it
    (with its keyword arguments) or passes --trust-checkpoint-calculator."""
    from actors.calculators import UntrustedCalculatorError

    lj = SimpleNamespace(calculator="ase.calculators.lj:LennardJones", calculator_kwargs={"sigma": 2.3, "epsilon": 0.1})
    with pytest.raises(UntrustedCalculatorError, match="--calculator ase.calculators.lj:LennardJones --calculator-kwargs "
                                                      "'{\"sigma\": 2.3, \"epsilon\": 0.1}'") as e:
        resolve_calculator(None, None, lj, source="checkpoint c.pt")
    assert str(e.value).startswith("checkpoint c.pt names calculator 'ase.calculators.lj:LennardJones'")
    with pytest.raises(UntrustedCalculatorError, match="its keyword arguments come from there"):
        resolve_calculator("ase.calculators.lj:LennardJones", None, lj)  # named, but the kwargs are the file's
    with pytest.raises(UntrustedCalculatorError, match="not built in"):
        resolve_calculator(None, '{"sigma": 2.3}', lj)  # the kwargs are the user's, the name is the file's
    named = resolve_calculator("ase.calculators.lj:LennardJones", '{"sigma": 2.0, "epsilon": 0.2}', lj)
    assert named == ("ase.calculators.lj:LennardJones", {"sigma": 2.0, "epsilon": 0.2})
    assert resolve_calculator(None, None, lj, trust=True) == (lj.calculator, lj.calculator_kwargs)
    # built-in names are safe with the stored kwargs (they are checked when built)
    emt = SimpleNamespace(calculator="emt", calculator_kwargs={"asap_cutoff": True})
    assert resolve_calculator(None, None, emt) == ("emt", {"asap_cutoff": True})


@pytest.mark.parametrize("name, kwargs, message", [
    ("emt", {"cutoff": 6.0}, "calculator 'emt' does not take env.calculator_kwargs cutoff (it would store them and "
                             "never read them); it takes asap_cutoff"),
    ("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.1, "sigmaa": 1},
     "does not take env.calculator_kwargs sigmaa"),
    ("ase.calculators.lj:LennardJones", {"sigma": -2.3, "epsilon": 0.1}, "sigma = -2.3 must be a finite number > 0"),
    ("ase.calculators.lj:LennardJones", {"sigma": 2.3, "epsilon": 0.0}, "epsilon = 0.0 must be a finite number > 0"),
    ("ase.calculators.morse:MorsePotential", {"epsilon": 0.3, "r0": -2.5, "rho0": 6}, "r0 = -2.5 must be"),
    ("ase.calculators.lj:LennardJones", {"sigma": "2", "epsilon": 0.1}, "sigma = '2' must be a finite number > 0"),
])
def test_unknown_kwargs_and_nonsense_pair_parameters_are_refused(name, kwargs, message):
    with pytest.raises(CalculatorError) as e:
        make_calculator(name, kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- CHGNet


def test_chgnet_model_is_loaded_once_per_process_and_shared():
    clear_model_cache()
    t0 = time.perf_counter()
    first = make_calculator("chgnet", CPU)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    others = [make_calculator("chgnet", {"device": "cpu", "model_name": "0.3.0"}) for _ in range(4)]
    again_s = time.perf_counter() - t0
    assert all(c is not first and c.model is first.model for c in others)  # own results cache, one model
    assert model_cache_info()['chgnet{"device": "cpu", "model_name": "0.3.0"}'] == 1
    assert again_s < max(0.5, load_s)
    print(f"CHGNet first calculator {load_s:.2f} s, four more {again_s:.3f} s")


def test_chgnet_through_relaxenv_finite_forces_and_the_emt_reward():
    env = RelaxEnv(EnvConfig(calculator="chgnet", calculator_kwargs=CPU, max_step=0.2))
    obs = env.reset(alfe_b2())
    assert obs.forces.shape == (2, 3) and np.isfinite(obs.forces).all()
    fmax0, _ = force_stats(obs.forces)
    assert fmax0 > 0.05  # displaced from B2: not converged
    step = env.step(0.05 * obs.forces)  # a small step along the forces (downhill), no correction
    assert np.isfinite(step.obs.forces).all() and math.isfinite(step.info["energy"])
    assert step.info["a_back"] == 0.0
    fmax1, fmean1 = force_stats(step.obs.forces)
    assert fmax1 < fmax0
    assert step.reward == pytest.approx(compute_reward(fmax1, fmean1, fmax0, 0.0, env.cfg), abs=1e-12)
    # CHGNet agrees with a fresh evaluation of the same positions (the env moved the atoms it reports)
    check = env.atoms
    check.calc = make_calculator("chgnet", CPU)
    np.testing.assert_allclose(check.get_forces(), step.obs.forces, atol=1e-5)
