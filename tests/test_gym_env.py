"""Gymnasium views: registration, spaces, env_checker on the fixed-size wrapper."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import actors  # noqa: F401  (registers the ids)
from actors.env import EnvConfig, RelaxEnv
from actors.generate import random_cluster
from actors.gym_env import FixedRelaxGymEnv, RelaxGymEnv, default_fixed_structure


def test_ids_are_registered():
    assert "relaxrl/Relax-v0" in gym.registry and "relaxrl/FixedRelax-v0" in gym.registry


def test_fixed_env_passes_the_gymnasium_checker():
    env = FixedRelaxGymEnv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded Box observations are intended
        check_env(env, skip_render_check=True)


def test_fixed_env_matches_relax_env():
    atoms = default_fixed_structure(4)
    env = gym.make("relaxrl/FixedRelax-v0", atoms=atoms, env_config=EnvConfig(max_steps=5))
    ref = RelaxEnv(EnvConfig(max_steps=5))
    obs, info = env.reset(seed=0)
    ref_obs = ref.reset(atoms)
    assert obs.shape == (24,) and obs.dtype == np.float32 and env.action_space.shape == (12,)
    np.testing.assert_allclose(obs, np.concatenate([ref_obs.positions.ravel(), ref_obs.forces.ravel()]), rtol=1e-6)
    action = np.full(12, 0.01, dtype=np.float32)
    obs, reward, terminated, truncated, info = env.step(action)
    step = ref.step(action.astype(np.float64).reshape(4, 3))
    assert reward == pytest.approx(step.reward) and info["a_back"] == step.info["a_back"]
    for _ in range(4):
        *_, terminated, truncated, _ = env.step(np.zeros(12, dtype=np.float32))
    assert truncated and not terminated


def test_dict_env_variable_atom_count():
    env = gym.make("relaxrl/Relax-v0")
    sizes = set()
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        sizes.add(info["n_atoms"])
        assert obs["positions"].shape == (info["n_atoms"], 3)
    assert len(sizes) > 1
    atoms = random_cluster(["Cu"] * 3, np.random.default_rng(0))
    obs, info = env.reset(options={"atoms": atoms})
    assert info["n_atoms"] == 3
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 3)))
    assert np.isfinite(reward) and env.observation_space.contains(obs)
    assert isinstance(env.unwrapped, RelaxGymEnv)
