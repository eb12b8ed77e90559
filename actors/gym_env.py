"""Gymnasium views of :class:`RelaxEnv`, so standard RL libraries train on the same environment.

* ``relaxrl/Relax-v0`` → :class:`RelaxGymEnv`: a new structure every episode (variable atom
  count). Dict observation whose per-atom entries are stacked ``Sequence`` spaces
  (``positions`` [n, 3] Å, ``numbers`` [n], ``forces`` [n, 3] eV/Å) plus ``cell`` [3, 3] Å,
  ``pbc`` [3] and ``env_features`` [env_input_dim]; the action is a stacked sequence of
  per-atom displacements [n, 3] Å.
* ``relaxrl/FixedRelax-v0`` → :class:`FixedRelaxGymEnv`: one fixed structure, flat float32
  observation ``concat(positions.ravel(), forces.ravel())`` [6n] and flat displacement
  action [3n] bounded by ``±max_step`` Å per component (the environment still caps each
  atom's move at ``max_step`` and corrects collisions).

Reward, termination and truncation are :class:`RelaxEnv`'s.
"""
from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

import gymnasium as gym
import numpy as np
from ase import Atoms
from gymnasium import spaces

from actors.curriculum import Curriculum
from actors.env import RelaxEnv
from actors.generate import generate_demo
from common.config import CurriculumConfig, EnvConfig
from common.errors import RelaxRLError

__all__ = ["FixedRelaxGymEnv", "RelaxGymEnv", "default_fixed_structure"]


def default_fixed_structure(n_atoms: int = 5, seed: int = 0) -> Atoms:
    """The first generated demo cluster with ``n_atoms`` atoms (deterministic)."""
    for atoms in generate_demo(CurriculumConfig(n_structures=12), seed):
        if len(atoms) == n_atoms and atoms.info.get("kind") == "cluster":
            return atoms
    raise ValueError(f"no generated demo cluster has {n_atoms} atoms; use 3..8")


def _atoms_only(cfg: EnvConfig | None) -> None:
    """The Gymnasium views' spaces are per-atom moves: refuse ``env.relax_cell`` (its moves have 3 cell rows more)."""
    if cfg is not None and cfg.relax_cell:
        raise RelaxRLError("the Gymnasium views move atoms only (one 3-vector per atom); env.relax_cell adds 3 cell rows "
                           "they have no space for: use RelaxEnv itself, or env.relax_cell = false")


class RelaxGymEnv(gym.Env):
    """Variable-size relaxation episodes; structures from a list or a :class:`Curriculum`."""

    metadata = {"render_modes": []}

    def __init__(self, env_config: EnvConfig | None = None, structures: Seq[Atoms] | Curriculum | None = None,
                 seed: int = 0):
        _atoms_only(env_config)
        self.env = RelaxEnv(env_config)
        cfg = self.env.cfg
        if structures is None:
            structures = [a for a in generate_demo(CurriculumConfig(n_structures=16), seed) if len(a) <= 8]
        self.source = structures
        self._last_info: dict[str, Any] = {}
        self.observation_space = spaces.Dict({
            "positions": spaces.Sequence(spaces.Box(-np.inf, np.inf, (3,), np.float64), stack=True),
            "numbers": spaces.Sequence(spaces.Discrete(119), stack=True),
            "forces": spaces.Sequence(spaces.Box(-np.inf, np.inf, (3,), np.float64), stack=True),
            "cell": spaces.Box(-np.inf, np.inf, (3, 3), np.float64),
            "pbc": spaces.MultiBinary(3),
            "env_features": spaces.Box(-np.inf, np.inf, (cfg.env_input_dim,), np.float64),
        })
        self.action_space = spaces.Sequence(spaces.Box(-cfg.max_step, cfg.max_step, (3,), np.float64), stack=True)

    @staticmethod
    def _to_dict(obs) -> dict[str, np.ndarray]:
        return {  # fresh arrays every call (callers keep observations)
            "positions": obs.positions.copy(),
            "numbers": obs.numbers.astype(np.int64),
            "forces": obs.forces.copy(),
            "cell": obs.cell.copy(),
            "pbc": obs.pbc.astype(np.int8),
            "env_features": obs.env_features.copy(),
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """New episode; ``options={"atoms": atoms}`` picks the structure, else one is sampled."""
        super().reset(seed=seed)
        if options and options.get("atoms") is not None:
            atoms = options["atoms"]
        elif isinstance(self.source, Curriculum):
            atoms = self.source.sample(self.np_random)
        else:
            atoms = self.source[int(self.np_random.integers(len(self.source)))]
        obs = self.env.reset(atoms)
        return self._to_dict(obs), {"name": self.env.name, "n_atoms": obs.n_atoms}

    def step(self, action):
        res = self.env.step(np.asarray(action, dtype=np.float64).reshape(-1, 3))
        return self._to_dict(res.obs), res.reward, res.terminated, res.truncated, res.info


class FixedRelaxGymEnv(gym.Env):
    """One fixed structure with flat Box spaces (for RLlib and other fixed-shape libraries)."""

    metadata = {"render_modes": []}

    def __init__(self, atoms: Atoms | None = None, env_config: EnvConfig | None = None):
        _atoms_only(env_config)
        self.env = RelaxEnv(env_config)
        self.atoms = (atoms if atoms is not None else default_fixed_structure()).copy()
        n = len(self.atoms)
        self.n_atoms = n
        self.observation_space = spaces.Box(-np.inf, np.inf, (6 * n,), np.float32)
        bound = np.float32(self.env.cfg.max_step)
        self.action_space = spaces.Box(-bound, bound, (3 * n,), np.float32)

    @staticmethod
    def _flat(obs) -> np.ndarray:
        return np.concatenate([obs.positions.ravel(), obs.forces.ravel()]).astype(np.float32)  # [6n]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs = self.env.reset(self.atoms)
        return self._flat(obs), {"name": self.env.name, "fmax": obs.fmax}

    def step(self, action):
        displacement = np.asarray(action, dtype=np.float64).reshape(self.n_atoms, 3)  # [n, 3] Å
        res = self.env.step(displacement)
        info = {k: v for k, v in res.info.items() if k != "actual_move"}
        return self._flat(res.obs), float(res.reward), bool(res.terminated), bool(res.truncated), info
