"""One episode through :class:`RelaxEnv` driven by any ``act(obs) -> displacement`` (a policy or a teacher)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ase import Atoms

from actors.env import RelaxEnv
from common.observation import Observation

__all__ = ["run_episode"]


def run_episode(env: RelaxEnv, act: Callable[[Observation], np.ndarray], atoms: Atoms,
                trace: list | None = None) -> dict[str, Any]:
    """Relax ``atoms`` (a copy) with ``act``'s displacements until the episode ends; returns a summary.

    Keys: name, n_atoms, steps, force_calls, converged, truncated, fmax_initial and
    fmax_final (eV/Å), energy_initial, energy_final and energy_change (eV), return (sum of
    rewards), mean_a_back, error (None or the env's message). ``trace``, when given, gets one
    ``(obs, action, reward)`` per step: the observation acted on, ``act``'s displacement, the reward.
    """
    obs = env.reset(atoms)
    summary: dict[str, Any] = {
        "name": env.name, "n_atoms": obs.n_atoms, "fmax_initial": obs.fmax, "energy_initial": obs.energy,
    }
    total_reward, backs, error = 0.0, [], None
    converged = obs.fmax < env.cfg.fmax
    truncated = False
    while not converged and not truncated:
        action = act(obs)
        step = env.step(action)
        if trace is not None:
            trace.append((obs, action, step.reward))
        obs = step.obs
        total_reward += step.reward
        backs.append(step.info["a_back"])
        converged, truncated = step.terminated, step.truncated
        error = step.info.get("error", error)
    summary.update(
        steps=env.steps, force_calls=env.force_calls, converged=bool(converged), truncated=bool(truncated),
        fmax_final=obs.fmax, energy_final=obs.energy, energy_change=obs.energy - summary["energy_initial"],
        mean_a_back=sum(backs) / len(backs) if backs else 0.0, error=error,
    )
    summary["return"] = total_reward
    return summary

