"""The trained policy as an object actors and optimizers can call: observation in, displacement out.

    policy = load_policy("runs/demo-.../")          # newest checkpoint of a run, or a file
    d = policy.act(obs)                               # [n_atoms, 3] Å, deterministic
    ds = policy.act_batch([obs1, obs2])               # one batched forward

The policy is the actor network only; the critic stays with the learner.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import DROPPED_KEYS, REMOVED_KEYS, ConfigError, from_dict, rename_old_keys, to_dict
from common.observation import Observation, env_features
from learner.checkpoint import CheckpointError, check_weights_dtype, load_checkpoint, save_checkpoint
from learner.graph import batch_graphs, torch_dtype, unstack_rows
from learner.heads import Actor, build_actor, initial_actor


class Policy:
    """An e3nn actor with the run config it was trained with."""

    def __init__(self, config, device: str | torch.device = "cpu", actor: Actor | None = None):
        self.config = config  # common.config.RunConfig
        self.device = torch.device(device)
        self.dtype = torch_dtype(config.network.dtype)
        self.actor = actor if actor is not None else build_actor(config.network, config.env).to(self.device, self.dtype)
        self.actor.eval()
        self.version = 0

    def load_weights(self, state: dict, version: int = 0) -> None:
        """Load an actor state dict (CPU tensors are moved to this policy's device)."""
        self.actor.load_state_dict(state)
        self.version = version

    def weights(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.actor.state_dict().items()}

    @torch.no_grad()
    def act_batch(self, observations: Sequence[Observation], return_scale: bool = False):
        """Displacements [n_i, 3] (Å) for each observation ([n_i + 3, 3] with the cell rows of an observation that has
        them); with ``return_scale`` also the env gate per observation."""
        graph = batch_graphs(list(observations), self.config.network, device=self.device, dtype=self.dtype,
                             env_input_dim=self.config.env.env_input_dim)
        disp, scale = self.actor(graph, return_scale=True)  # [n_rows, 3], [n_graphs]
        parts = unstack_rows(disp.cpu().double().numpy(), [o.n_atoms for o in observations], graph.has_cell_rows)
        if return_scale:
            return parts, scale.cpu().double().numpy()
        return parts

    def act(self, obs: Observation) -> np.ndarray:
        return self.act_batch([obs])[0]

    def observe(self, atoms, forces: np.ndarray, energy: float, step_fraction: float = 0.0,
                last_a_back: float = 0.0, cell_forces: np.ndarray | None = None) -> Observation:
        """The observation this policy expects for ``atoms`` with the given forces (eV/Å) and energy (eV); with
        ``cell_forces`` [3, 3] (a cell filter's cell rows) the cell relaxes too, ``forces`` are the filter's atom rows
        and Fmax runs over all rows."""
        obs = Observation.from_atoms(atoms, forces=forces, energy=energy)
        obs.cell_forces = None if cell_forces is None else np.asarray(cell_forces, dtype=np.float64)
        obs.env_features = env_features(obs.fmax, step_fraction, last_a_back, self.config.env.env_input_dim)
        return obs


def untrained_policy(config, device: str | torch.device = "cpu") -> Policy:
    """The policy a run of ``config`` starts from: the learner's initial actor (:func:`learner.heads.initial_actor`,
    seeded with ``run.seed``), weights version 0. Torch's global random stream is left where it was."""
    with torch.random.fork_rng(devices=[]):
        actor = initial_actor(config)
    return Policy(config, device, actor=actor.to(torch.device(device), torch_dtype(config.network.dtype)))


def save_policy(run_dir: str | Path, config, actor: torch.nn.Module, updates: int = 0, **extra) -> Path:
    """A checkpoint holding only what a policy needs (the learner's checkpoints hold more and load here too)."""
    return save_checkpoint(run_dir, updates, {"config": to_dict(config), "actor": actor.state_dict(),
                                               "counters": {"updates": updates, "t_total": 0}, **extra})


def load_policy(path: str | Path, device: str | torch.device = "cpu", expect_config=None) -> Policy:
    """The policy of a checkpoint file or of a run directory's newest checkpoint: its actor, or the average of the
    actor's weights where the run kept one (``actor_average``, learner.policy_average).

    ``expect_config``: a RunConfig whose network section the checkpoint must match.
    """
    data = load_checkpoint(path, map_location=device)
    try:
        config = from_dict(upgrade_checkpoint_config(data["config"]))
    except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as e:  # a damaged or foreign config dict
        raise CheckpointError(f"{data['path']}: its config is not valid for this relaxrl version "
                              f"({type(e).__name__}: {e}); use a checkpoint written by this version") from None
    if expect_config is not None and expect_config.network != config.network:
        diff = {k: (getattr(config.network, k), getattr(expect_config.network, k))
                for k in config.network.__dataclass_fields__ if getattr(config.network, k) != getattr(expect_config.network, k)}
        raise CheckpointError(f"{data['path']} was trained with a different network config: "
                              + ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items()))
    policy = Policy(config, device=device)
    entry = "actor_average" if isinstance(data.get("actor_average"), dict) else "actor"
    check_weights_dtype(data["path"], entry, data[entry], policy.dtype, "network.dtype")
    try:
        policy.load_weights(data[entry], version=data.get("counters", {}).get("updates", 0))  # types checked on load
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{data['path']}: actor weights do not fit the network of its config "
                              f"({str(e).splitlines()[0][:200]}); the checkpoint is from an incompatible version") from None
    return policy


def upgrade_checkpoint_config(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config dict with the keys of earlier versions (``common.config.REMOVED_KEYS``) translated.

    Only checkpoints are translated: a user's TOML or ``--set`` naming a removed key is an error.
    ``network.max_step`` (the actor's output bound, which its weights were trained with) becomes
    ``env.max_step``; ``expert.maxstep`` and ``network.env_input_dim`` had to equal the env's
    values (``env.env_input_dim`` was checked against it) and are dropped, as are the settings of
    :data:`~common.config.DROPPED_KEYS` (nothing read them). Renamed keys
    (:data:`~common.config.RENAMED_KEYS`) take their new name, without the warning a user's file gets.
    """
    data = rename_old_keys(data, warn=False)
    for old in DROPPED_KEYS:
        section, key = old.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    for old in REMOVED_KEYS:
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            if old == "network.max_step":
                env = data.setdefault("env", {})
                if env.get("max_step", value) != value:
                    warnings.warn(f"checkpoint config: network.max_step {value} differs from env.max_step "
                                  f"{env['max_step']}; the policy keeps its trained bound, env.max_step = {value}",
                                  stacklevel=2)
                env["max_step"] = value
    return data
