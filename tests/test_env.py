"""RelaxEnv: reward terms, action correction, invariance under rotation, bad inputs."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.data import covalent_radii

from actors.env import (
    REFERENCE_ENERGY,
    ActionError,
    CalculatorError,
    EnvConfig,
    EpisodeError,
    RelaxEnv,
    compute_reward,
    correct_action,
    force_stats,
)
from actors.expert import BFGSExpert
from actors.generate import generate_demo, random_cluster, rattled_bulk
from actors.structure_check import StructureError
from common.config import ConfigError, CurriculumConfig, NetworkConfig, load_config
from common.observation import Observation
from learner.graph import batch_graphs
from learner.learner import corrected_moves

R_CU = covalent_radii[29]  # Å


class FixedForces(Calculator):
    """Test calculator: forces and energy given up front, independent of positions."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, forces: np.ndarray, energy: float = -1.0):
        super().__init__()
        self.fixed_forces = np.asarray(forces, dtype=float)
        self.fixed_energy = energy

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = {"energy": self.fixed_energy, "forces": self.fixed_forces.copy()}


class NaNAfter(Calculator):
    """Test calculator: harmonic forces toward the origin, NaN from the ``bad_call``-th call on."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, bad_call: int):
        super().__init__()
        self.bad_call = bad_call
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        pos = atoms.positions - atoms.positions.mean(axis=0)
        forces = -0.5 * pos
        energy = 0.25 * float((pos**2).sum())
        if self.calls >= self.bad_call:
            forces = np.full_like(forces, np.nan)
        self.results = {"energy": energy, "forces": forces}


def dimer(distance: float = 2.5) -> Atoms:
    return Atoms("Cu2", positions=[[0, 0, 0], [distance, 0, 0]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


# ----------------------------------------------------------------------------- reward


@pytest.mark.parametrize(
    "fmax, fmean, fmax_prev, a_back, expected",
    [
        # −0.7·0.5 − 0.3·0.2 + 1.0·(0.8 − 0.5) + 0.1·(−log10 0.5) − 1.0·0.25
        (0.5, 0.2, 0.8, 0.25, -0.35 - 0.06 + 0.3 + 0.1 * 0.30102999566398120 - 0.25),
        # converged: −0.7·0.01 − 0.3·0.005 + (0.02 − 0.01) + 0.1·2 − 0 + 10
        (0.01, 0.005, 0.02, 0.0, -0.007 - 0.0015 + 0.01 + 0.2 + 10.0),
        # Fmax = 0 is clamped to 1e-6 inside the log: +0.1·6
        (0.0, 0.0, 0.0, 1.0, 0.6 - 1.0 + 10.0),
    ],
)
def test_reward_terms_hand_computed(fmax, fmean, fmax_prev, a_back, expected):
    assert compute_reward(fmax, fmean, fmax_prev, a_back, EnvConfig()) == pytest.approx(expected, abs=1e-12)


def test_reward_weights_come_from_config():
    cfg = EnvConfig(w_fmax=2.0, w_fmean=0.0, w_delta=0.0, w_log=0.0, w_back=3.0, converged_bonus=0.0)
    assert compute_reward(1.5, 9.0, 4.0, 0.5, cfg) == pytest.approx(-2.0 * 1.5 - 3.0 * 0.5)


def test_energy_terms_of_an_episode_sum_to_its_energy_drop_per_atom():
    # The same steps with and without w_energy: the reward differs by w_energy·(E_prev − E)/n_atoms on each step,
    # and over the episode by w_energy·(E_0 − E_end)/n_atoms, what EMT itself says of the start and the end.
    atoms = random_cluster(["Cu"] * 6, np.random.default_rng(3))
    rewards = {}
    for w in (0.0, 20.0):
        env = RelaxEnv(EnvConfig(max_steps=8, w_energy=w))
        obs = env.reset(atoms)
        expert = BFGSExpert(maxstep=env.cfg.max_step)
        rs = []
        for _ in range(8):
            step = env.step(expert.action(obs))
            rs.append(step.reward)
            obs = step.obs
            if step.terminated or step.truncated:
                break
        rewards[w] = np.array(rs)
        end = env.atoms
    e0 = atoms.copy()
    e0.calc = EMT()
    end.calc = EMT()
    drop = (e0.get_potential_energy() - end.get_potential_energy()) / len(atoms)  # eV/atom
    assert drop > 0.01  # the steps went downhill, so the test can tell a sign error
    assert float((rewards[20.0] - rewards[0.0]).sum()) == pytest.approx(20.0 * drop, rel=1e-9, abs=1e-9)


def test_a_negative_energy_weight_is_a_clear_error():
    with pytest.raises(Exception, match="w_energy"):
        EnvConfig(w_energy=-1.0)


# Each range of EnvConfig at its edges: the values just inside pass the config, and the environment takes them.
ENV_EDGES = {"fmax": (1e-6, 0.0), "max_steps": (1, 0), "max_step": (1e-3, 0.0),
             "min_distance_factor": (0.0, -0.1), "env_input_dim": (3, 4), "history_steps": (16, 17)}


@pytest.mark.parametrize("key", list(ENV_EDGES))
def test_what_passes_the_config_check_the_environment_takes(key):
    """One home per rule: the environment runs EnvConfig's own check, so a setting `relaxrl train` accepts before
    the run never fails inside an actor, and one it refuses is refused before the run, naming the key."""
    inside, outside = ENV_EDGES[key]
    env = RelaxEnv(EnvConfig(**{key: inside}))
    wide = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.7]])  # farther apart than 0.999 × (r_cov + r_cov) = 2.64 Å
    env.step(0.01 * env.reset(wide).forces)
    with pytest.raises(ConfigError, match=f"env.{key} must be"):
        EnvConfig(**{key: outside})
    forced = EnvConfig()
    object.__setattr__(forced, key, outside)  # a config that went around its own check: the env runs the same one
    with pytest.raises(ConfigError, match=f"env.{key} must be"):
        RelaxEnv(forced)


@pytest.mark.parametrize("factor", [1.0, 1.2])
def test_a_min_distance_factor_of_a_bond_length_or_more_is_refused_before_the_run(factor):
    """Issue 26: env.min_distance_factor = 1.2 passed the config ([0, 2)) and then failed inside every actor."""
    with pytest.raises(ConfigError, match=r"env.min_distance_factor must be a factor in \[0, 1\)"):
        load_config(None, [f"env.min_distance_factor={factor}"])


def test_env_step_reward_from_known_forces():
    # Atom 0 feels a 3-4-0 force (norm 5), atom 1 (0, 0, 1) (norm 1): Fmax 5, Fmean 3 eV/Å.
    forces = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    env = RelaxEnv(EnvConfig(max_step=0.2), calculator=FixedForces(forces))
    obs = env.reset(dimer(3.0))
    assert force_stats(obs.forces) == (5.0, 3.0)
    step = env.step(np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 0.0]]))  # harmless move, a_back 0
    expected = -0.7 * 5.0 - 0.3 * 3.0 + 1.0 * (5.0 - 5.0) + 0.1 * (-math.log10(5.0)) - 0.0
    assert step.reward == pytest.approx(expected, abs=1e-12)
    assert step.info["fmax"] == 5.0 and step.info["fmean"] == 3.0
    assert step.info["a_back"] == 0.0
    assert step.info["energy"] == -1.0


# ----------------------------------------------------------------------------- correction


def test_forced_collision_scales_back_to_the_contact_distance():
    cfg = EnvConfig(max_step=0.2, min_distance_factor=0.9)
    dmin = 0.9 * 2 * R_CU  # 2.376 Å
    env = RelaxEnv(cfg)
    env.reset(dimer(2.5))
    proposed = np.array([[0.15, 0.0, 0.0], [-0.15, 0.0, 0.0]])  # would end at 2.2 Å
    step = env.step(proposed)
    t = (2.5 - dmin) / 0.3  # fraction of the move that keeps the pair at dmin
    np.testing.assert_allclose(step.info["actual_move"], t * proposed, atol=1e-9)
    assert step.info["a_back"] == pytest.approx(1.0 - t, abs=1e-9)
    assert step.info["actual_move_norm"] == pytest.approx(0.15 * t, abs=1e-9)
    d = np.linalg.norm(step.obs.positions[1] - step.obs.positions[0])
    assert d == pytest.approx(dmin, rel=1e-8)
    assert d >= dmin * (1 - 1e-9)


def test_collision_across_a_periodic_boundary():
    cfg = EnvConfig(max_step=0.2, min_distance_factor=0.9)
    dmin = 0.9 * 2 * R_CU
    atoms = Atoms("Cu2", positions=[[1.0, 5, 5], [8.6, 5, 5]], cell=[10, 10, 10], pbc=True)  # 2.4 Å apart via image
    proposed = np.array([[-0.2, 0.0, 0.0], [0.2, 0.0, 0.0]])
    actual, a_back = correct_action(atoms, proposed, cfg)
    t = (2.4 - dmin) / 0.4
    np.testing.assert_allclose(actual, t * proposed, atol=1e-9)
    assert a_back == pytest.approx(1.0 - t, abs=1e-9)


def test_max_step_cap_counts_as_taken_back():
    cfg = EnvConfig(max_step=0.2)
    proposed = np.array([[1.0, 0.0, 0.0], [0.0, 0.1, 0.0]])  # atom 0 capped to 0.2 Å, atom 1 untouched
    actual, a_back = correct_action(dimer(5.0), proposed, cfg)
    np.testing.assert_allclose(actual, [[0.2, 0, 0], [0, 0.1, 0]])
    assert a_back == pytest.approx(1.0 - math.sqrt(0.2**2 + 0.1**2) / math.sqrt(1.0 + 0.01))


def test_correct_action_is_pure_and_matches_the_env():
    atoms = random_cluster(["Cu"] * 6, np.random.default_rng(1), min_distance=2.4)
    before = atoms.positions.copy()
    proposed = np.random.default_rng(2).normal(scale=0.4, size=(6, 3))
    keep = proposed.copy()
    cfg = EnvConfig(min_distance_factor=0.85)
    actual, a_back = correct_action(atoms, proposed, cfg)
    np.testing.assert_array_equal(atoms.positions, before)
    np.testing.assert_array_equal(proposed, keep)
    env = RelaxEnv(cfg)
    env.reset(atoms)
    step = env.step(proposed)
    np.testing.assert_allclose(step.info["actual_move"], actual, atol=1e-12)
    assert step.info["a_back"] == pytest.approx(a_back, abs=1e-12)


def test_many_colliding_moves_never_end_too_close():
    cfg = EnvConfig(max_step=0.3, min_distance_factor=0.95)
    rng = np.random.default_rng(5)
    atoms = random_cluster(["Cu"] * 8, rng, min_distance=2.6)
    env = RelaxEnv(cfg)
    obs = env.reset(atoms)
    dmin = 0.95 * 2 * R_CU
    backs = []
    for _ in range(10):
        centre = obs.positions.mean(axis=0)
        step = env.step(0.3 * (centre - obs.positions) + rng.normal(scale=0.1, size=obs.positions.shape))
        obs = step.obs
        backs.append(step.info["a_back"])
        d = np.linalg.norm(obs.positions[:, None] - obs.positions[None], axis=-1)[np.triu_indices(8, 1)]
        assert d.min() >= dmin * (1 - 1e-8)
        assert 0.0 <= step.info["a_back"] <= 1.0
        if step.terminated or step.truncated:
            break
    assert max(backs) > 0  # the squeeze did trigger corrections


@pytest.mark.parametrize("kind", ["cluster", "bulk"])
def test_rotation_leaves_reward_a_back_and_move_norm_unchanged(kind):
    rng = np.random.default_rng(11)
    atoms = random_cluster(["Cu", "Ag", "Cu", "Au", "Ni"], rng, 2.4) if kind == "cluster" else rattled_bulk("Cu", 8, rng)
    rot = random_rotation(rng)  # [3, 3], det +1
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    rotated.cell = atoms.cell[:] @ rot.T
    cfg = EnvConfig(max_step=0.25, min_distance_factor=0.8)
    env_a, env_b = RelaxEnv(cfg), RelaxEnv(cfg)
    env_a.reset(atoms)
    env_b.reset(rotated)
    backs = []
    for k in range(6):
        if k % 2:  # squeeze every atom toward the centre: collisions get scaled back
            pos = env_a.positions
            action = 0.5 * (pos.mean(axis=0) - pos)
        else:  # large enough to be capped
            action = rng.normal(scale=0.3, size=(len(atoms), 3))
        sa, sb = env_a.step(action), env_b.step(action @ rot.T)
        assert sb.reward == pytest.approx(sa.reward, abs=1e-9)
        assert sb.info["a_back"] == pytest.approx(sa.info["a_back"], abs=1e-12)
        np.testing.assert_allclose(np.linalg.norm(sb.info["actual_move"], axis=1),
                                   np.linalg.norm(sa.info["actual_move"], axis=1), atol=1e-12)
        np.testing.assert_allclose(sb.obs.forces, sa.obs.forces @ rot.T, atol=1e-9)
        backs.append(sa.info["a_back"])
    assert min(backs) > 0


# ----------------------------------------------------------------------------- episode


def test_observation_fields_and_env_features():
    atoms = generate_demo(CurriculumConfig(n_structures=4), 0)[0]
    env = RelaxEnv(EnvConfig(env_input_dim=3, max_steps=10))
    obs = env.reset(atoms)
    assert isinstance(obs, Observation)
    assert obs.positions.shape == (len(atoms), 3) and obs.forces.shape == (len(atoms), 3)
    assert obs.numbers.dtype == np.int64 and obs.cell.shape == (3, 3) and obs.pbc.shape == (3,)
    np.testing.assert_allclose(obs.env_features, [math.log10(obs.fmax), 0.0, 0.0])
    step = env.step(np.full((len(atoms), 3), np.nan))
    np.testing.assert_allclose(step.obs.env_features, [math.log10(obs.fmax), 0.1, 1.0])
    assert RelaxEnv(EnvConfig(env_input_dim=0)).reset(atoms).env_features.shape == (0,)


def test_terminated_on_convergence_and_force_calls_counted():
    atoms = generate_demo(CurriculumConfig(n_structures=4), 0)[0]
    env, expert = RelaxEnv(EnvConfig(fmax=0.05)), BFGSExpert()
    obs = env.reset(atoms)
    assert env.force_calls == 1
    while True:
        step = env.step(expert.action(obs))
        obs = step.obs
        assert step.info["force_calls"] == step.info["steps"] + 1
        if step.terminated or step.truncated:
            break
    assert step.terminated and not step.truncated and step.info["converged"]
    assert step.info["fmax"] < 0.05 and step.reward > 5  # the bonus
    with pytest.raises(EpisodeError):
        env.step(np.zeros_like(obs.positions))


def test_truncated_at_max_steps_and_zero_move_costs_no_force_call():
    env = RelaxEnv(EnvConfig(max_steps=3))
    obs = env.reset(dimer(2.0 * R_CU + 0.6))
    for _ in range(3):
        step = env.step(np.zeros_like(obs.positions))
        assert step.info["force_calls"] == 1
    assert step.truncated and not step.terminated and step.info["steps"] == 3


def test_nan_action_is_no_move_with_full_a_back():
    env = RelaxEnv(EnvConfig())
    obs = env.reset(dimer(2.6))
    action = np.array([[np.nan, 0, 0], [0, np.inf, 0]])
    step = env.step(action)
    assert step.info["a_back"] == 1.0 and "non-finite action" in step.info["error"]
    np.testing.assert_array_equal(step.info["actual_move"], 0.0)
    np.testing.assert_array_equal(step.obs.positions, obs.positions)
    assert step.reward == pytest.approx(compute_reward(obs.fmax, obs.fmax, obs.fmax, 1.0, env.cfg))
    assert not step.terminated and not step.truncated
    env.step(np.zeros((2, 3)))  # the episode goes on


def test_nan_forces_end_the_episode_without_a_crash():
    env = RelaxEnv(EnvConfig(), calculator=NaNAfter(bad_call=3))
    env.reset(dimer(3.0))
    step = env.step(np.full((2, 3), 0.01))  # call 2: fine
    assert "error" not in step.info
    before = step.obs.positions
    step = env.step(np.full((2, 3), 0.01))  # call 3: NaN
    assert step.truncated and not step.terminated
    assert "non-finite" in step.info["error"]
    assert np.isfinite(step.obs.forces).all() and np.isfinite(step.reward)
    np.testing.assert_array_equal(step.obs.positions, before)  # put back where it was
    with pytest.raises(EpisodeError):
        env.step(np.zeros((2, 3)))


def test_nan_forces_on_reset_are_a_clear_error():
    with pytest.raises(CalculatorError, match="non-finite"):
        RelaxEnv(EnvConfig(), calculator=NaNAfter(bad_call=1)).reset(dimer(3.0))


@pytest.mark.parametrize("name", ["ase.calculators.lj:LennardJones", "ase.calculators.lj.LennardJones"])
def test_calculator_by_import_name_with_kwargs(name):
    env = RelaxEnv(EnvConfig(calculator=name, calculator_kwargs={"sigma": 2.3, "epsilon": 0.4, "rc": 6.0}))
    assert env.calc.parameters["sigma"] == 2.3
    obs = env.reset(Atoms("Fe2", positions=[[0, 0, 0], [2.4, 0, 0]]))  # any element for LJ
    assert np.isfinite(obs.forces).all()


@pytest.mark.parametrize("name", ["nosuchmodule:Calc", "ase.calculators.emt:NoSuchClass", "justaname"])
def test_unknown_calculator_is_a_clear_error(name):
    with pytest.raises(CalculatorError, match="env.calculator"):
        RelaxEnv(EnvConfig(calculator=name))


def test_bad_structures_are_rejected_on_reset():
    env = RelaxEnv(EnvConfig())
    with pytest.raises(StructureError, match="Fe.*EMT|Fe.*'emt'"):
        env.reset(Atoms("CuFe", positions=[[0, 0, 0], [2.5, 0, 0]]))
    with pytest.raises(StructureError, match="overlap"):
        env.reset(Atoms("Cu2", positions=[[0, 0, 0], [0.5, 0, 0]], info={"name": "squashed"}))


def test_wrong_action_shape_is_an_error():
    env = RelaxEnv(EnvConfig())
    env.reset(dimer(2.6))
    with pytest.raises(ActionError, match=r"\(2, 3\)"):
        env.step(np.zeros((3, 3)))


# ---- ASE constraints and the path history (issue 12) -------------------------------------------


def _slab_with_fixed_bottom():
    from ase.build import fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    slab.rattle(0.08, seed=3)
    fixed = [a.index for a in slab if a.tag == 3]  # bottom layer
    slab.set_constraint(FixAtoms(indices=fixed))
    return slab, np.array(fixed)


def test_fixed_atoms_never_move_and_do_not_count_in_fmax():
    slab, fixed = _slab_with_fixed_bottom()
    start = slab.get_positions()
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=20))
    obs = env.reset(slab)
    assert np.abs(obs.forces[fixed]).max() == 0.0  # forces read with the constraint applied
    rng = np.random.default_rng(0)
    for _ in range(8):
        step = env.step(0.05 * obs.forces + rng.normal(scale=0.03, size=obs.forces.shape))
        obs = step.obs
        assert np.array_equal(obs.positions[fixed], start[fixed])
        assert np.abs(step.info["actual_move"][fixed]).max() == 0.0
        assert np.abs(obs.forces[fixed]).max() == 0.0
        free = np.setdiff1d(np.arange(len(slab)), fixed)
        assert step.info["fmax"] == pytest.approx(np.linalg.norm(obs.forces[free], axis=1).max())
        assert obs.free[fixed].max() == 0.0 and obs.free[free].min() == 1.0  # the held coordinates, marked
    assert env.atoms.constraints, "the structure handed back keeps its constraint"
    assert RelaxEnv(EnvConfig()).reset(Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])).free is None  # nothing held


def test_history_is_the_last_move_and_the_force_change():
    atoms = Atoms("Cu4", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0], [0.1, 0.2, 2.3]])
    env = RelaxEnv(EnvConfig(fmax=0.01, max_steps=10))
    obs = env.reset(atoms)
    assert np.array_equal(obs.history, np.zeros((4, 6)))
    step = env.step(0.03 * obs.forces)
    assert np.allclose(step.obs.history[:, :3], step.info["actual_move"])
    assert np.allclose(step.obs.history[:, 3:], step.obs.forces - obs.forces)


def test_history_remembers_the_last_k_steps_newest_first():
    atoms = Atoms("Cu4", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0], [0.1, 0.2, 2.3]])
    env = RelaxEnv(EnvConfig(fmax=0.001, max_steps=10, history_steps=3))
    obs = env.reset(atoms)
    assert np.array_equal(obs.history, np.zeros((4, 18)))
    seen = [obs]
    for k in range(4):
        step = env.step(0.02 * seen[-1].forces if k != 2 else np.zeros((4, 3)))  # step 3 does not move
        seen.append(step.obs)
    h = seen[-1].history
    newest = np.concatenate([seen[4].positions - seen[3].positions, seen[4].forces - seen[3].forces], axis=1)
    np.testing.assert_allclose(h[:, :6], newest, atol=1e-12)
    assert np.array_equal(h[:, 6:12], np.zeros((4, 6)))  # the step without a move: zeros, no curvature
    np.testing.assert_allclose(h[:, 12:18], seen[2].history[:, :6], atol=1e-12)  # shifted, oldest dropped


@pytest.mark.parametrize("name, kwargs, missing", [
    ("ase.calculators.lj:LennardJones", {}, "sigma (default 1.0), epsilon (default 1.0)"),
    ("ase.calculators.morse:MorsePotential", {"epsilon": 0.3, "r0": 2.5}, "rho0 (default 6.0)"),
])
def test_a_pair_potential_with_placeholder_defaults_needs_its_parameters_in_the_config(name, kwargs, missing):
    """σ = 1 Å, ε = 1 eV fit no element: refused, naming the config key `relaxrl train` reads."""
    with pytest.raises(CalculatorError, match=rf"needs .* in env\.calculator_kwargs; missing {re.escape(missing)}"):
        RelaxEnv(EnvConfig(calculator=name, calculator_kwargs=kwargs))


def test_the_learner_corrects_a_whole_batch_as_the_env_corrects_each_structure():
    """learner.corrected_moves (graph edges as pairs, one call per batch) = correct_action per structure."""
    cfg = EnvConfig(max_step=0.3, min_distance_factor=0.9)
    rng = np.random.default_rng(7)
    structures = [random_cluster(["Cu"] * 7, rng, min_distance=2.3),
                  Atoms("Cu2", positions=[[1.0, 5, 5], [8.6, 5, 5]], cell=[10, 10, 10], pbc=True),
                  bulk("Ni", cubic=True)]
    proposals = [rng.normal(scale=0.4, size=(len(a), 3)) for a in structures]
    proposals[1] = np.array([[-0.2, 0.0, 0.0], [0.2, 0.0, 0.0]])  # a collision across the periodic boundary
    expected = [correct_action(a, p, cfg)[0] for a, p in zip(structures, proposals)]
    obs = []
    for a in structures:
        a.calc = EMT()
        obs.append(Observation.from_atoms(a))
    graph = batch_graphs(obs, NetworkConfig(dtype="float64"))
    got = corrected_moves(graph, torch.as_tensor(np.concatenate(proposals)), cfg).numpy()
    np.testing.assert_allclose(got, np.concatenate(expected), atol=1e-10)
    assert not np.allclose(got, np.concatenate(proposals))  # something was corrected


def _relax_by_descent(env: RelaxEnv, atoms: Atoms, step: float = 0.02):
    """Steepest descent through the env until the episode ends; the last StepResult."""
    obs = env.reset(atoms)
    while True:
        res = env.step(step * obs.forces)
        if res.terminated or res.truncated:
            return res
        obs = res.obs


def test_saddle_check_withholds_the_convergence_bonus_on_a_saddle_point():
    """A planar Cu4 square converges under steepest descent (the forces keep it planar) on a saddle
    point of EMT. With env.saddle_check_atoms the env finds the negative curvature at convergence and
    pays no convergence bonus; the episode's own force calls are the same as without the check."""
    d = 2.4
    square = Atoms("Cu4", positions=[[0, 0, 0], [d, 0, 0], [d, d, 0], [0, d, 0]])
    plain = RelaxEnv(EnvConfig(max_steps=300))
    checked = RelaxEnv(EnvConfig(max_steps=300, saddle_check_atoms=8))
    a, b = _relax_by_descent(plain, square), _relax_by_descent(checked, square)
    assert a.terminated and b.terminated and a.info["converged"] and b.info["converged"]
    assert "saddle" not in a.info
    assert b.info["saddle"] and b.info["lowest_curvature"] < -0.5
    assert b.info["saddle_check_force_calls"] == 24 + 3  # 2 per free coordinate and 3 energies confirming, on its own calculator
    assert a.reward - b.reward == pytest.approx(EnvConfig().converged_bonus)
    assert checked.force_calls == plain.force_calls
    # Above the size limit nothing is checked and the bonus is paid.
    small = RelaxEnv(EnvConfig(max_steps=300, saddle_check_atoms=3))
    c = _relax_by_descent(small, square)
    assert "saddle" not in c.info and c.reward == pytest.approx(a.reward)


def test_reference_check_withholds_the_bonus_above_the_structures_reference_minimum():
    """The planar Cu4 square's saddle point lies above the Cu4 tetrahedron's minimum. With env.reference_tolerance
    and that minimum as the structure's reference, the converged step earns no bonus, at no force call more; with
    the saddle's own energy as the reference (within the tolerance) the bonus is paid, and a structure without a
    reference, or the check off, is paid as before."""
    from ase.optimize import BFGS

    d = 2.4
    square = Atoms("Cu4", positions=[[0, 0, 0], [d, 0, 0], [d, d, 0], [0, d, 0]])
    tetra = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0], [1.25, 0.7, 2.0]])
    tetra.calc = EMT()
    BFGS(tetra, logfile=None).run(fmax=0.01)
    minimum = tetra.get_potential_energy() / 4  # eV/atom
    plain = _relax_by_descent(RelaxEnv(EnvConfig(max_steps=300)), square)
    saddle = plain.info["energy_per_atom"]
    assert plain.info["converged"] and saddle > minimum + 0.01  # the square's end is the higher stationary point

    def relaxed(reference, tolerance=1.0):
        a = square.copy()
        if reference is not None:
            a.info[REFERENCE_ENERGY] = reference
        env = RelaxEnv(EnvConfig(max_steps=300, reference_tolerance=tolerance))
        return _relax_by_descent(env, a), env.force_calls

    below, calls = relaxed(minimum)
    assert below.info["converged"] and below.info["above_reference"]
    assert below.info["reference_gap"] == pytest.approx(saddle - minimum)
    assert plain.reward - below.reward == pytest.approx(EnvConfig().converged_bonus)
    assert calls == plain.info["force_calls"]
    level, _ = relaxed(saddle - 0.0005)  # 0.5 meV/atom under the end: within 1 meV/atom
    assert not level.info["above_reference"] and level.reward == pytest.approx(plain.reward)
    for res, _ in (relaxed(None), relaxed(minimum, tolerance=0.0)):
        assert "above_reference" not in res.info and res.reward == pytest.approx(plain.reward)


def test_saddle_check_keeps_the_bonus_in_a_minimum_and_respects_fixed_atoms():
    """A rattled cluster relaxes into a minimum: checked, not a saddle, full bonus. On a slab with
    FixAtoms only the free atoms count against the size limit and enter the Hessian."""
    cluster = random_cluster(["Cu"] * 5, np.random.default_rng(4))
    res = _relax_by_descent(RelaxEnv(EnvConfig(max_steps=400, saddle_check_atoms=8)), cluster)
    assert res.info["converged"] and res.info["saddle"] is False and res.info["lowest_curvature"] > 0.05
    assert res.reward > EnvConfig().converged_bonus - 1.0

    from ase.build import fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    slab.set_constraint(FixAtoms(mask=slab.positions[:, 2] < slab.positions[:, 2].min() + 1.0))  # bottom layer
    slab.rattle(0.05, seed=1)
    env = RelaxEnv(EnvConfig(max_steps=400, saddle_check_atoms=8))  # 8 free atoms of 12
    res = _relax_by_descent(env, slab)
    assert res.info["converged"] and res.info["saddle_check_force_calls"] == 2 * 3 * 8
    assert res.info["saddle"] is False



def test_with_the_cell_the_saddle_check_runs_over_the_cell_filters_rows():
    """bcc Cu at its stationary lattice constant is converged at once and a minimum of the atoms alone, but a saddle
    of atoms and cell (the Bain path): with env.relax_cell the check sees it (2 calls per free atom coordinate and
    per cell row coordinate, 3 to confirm) and withholds the bonus; without the cell it is a minimum."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    bcc = bulk("Cu", "bcc", a=2.87, cubic=True)
    bcc.calc = EMT()
    BFGS(FrechetCellFilter(bcc), logfile=None).run(fmax=1e-4, steps=100)
    bcc.calc = None
    with_cell = RelaxEnv(EnvConfig(relax_cell=True, saddle_check_atoms=8))
    with_cell.reset(bcc)
    res = with_cell.step(np.zeros((len(bcc) + 3, 3)))
    assert res.terminated and res.info["converged"]
    assert res.info["saddle"] and res.info["lowest_curvature"] < -0.1
    assert res.info["saddle_check_force_calls"] == 2 * (3 * 2 + 9) + 3  # and 3 energies confirming the saddle
    atoms_only = RelaxEnv(EnvConfig(saddle_check_atoms=8))
    atoms_only.reset(bcc)
    res = atoms_only.step(np.zeros((len(bcc), 3)))
    assert res.info["converged"] and res.info["saddle"] is False and res.info["lowest_curvature"] > 5.0


def test_a_negative_saddle_check_size_is_a_clear_error():
    with pytest.raises(Exception, match="saddle_check_atoms"):
        RelaxEnv(EnvConfig(saddle_check_atoms=-1))
