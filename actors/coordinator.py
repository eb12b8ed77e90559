"""Shared actor-side state: the curriculum, the published weights, step counts and episode statistics.

One ``Coordinator`` serves every actor of a run (Ray wraps it in ``actors/ray_actors.py``;
tests use it in-process). It holds no algorithm: it hands out structures, keeps the newest
weights with their version, counts t_total, and aggregates what the actors saw so the
launcher can show and log it.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from actors.curriculum import Curriculum
from common.names import ACTOR_KINDS


class Coordinator:
    def __init__(self, curriculum: Curriculum, t_total: int = 0, seed: int = 0, window: int = 200):
        self.curriculum = curriculum
        self.rng = np.random.default_rng(seed)
        self.t_total = int(t_total)
        self.t_start = int(t_total)
        self.steps_by_kind: dict[str, int] = dict.fromkeys(ACTOR_KINDS, 0)
        self.teacher_force_calls = 0  # the teachers' training-only force calls, summed over every actor's steps
        self.version = -1
        self.weights: Any = None
        self._stop = False
        self._started = time.monotonic()
        self.episodes = 0
        self._episodes: deque = deque(maxlen=window)  # (kind, success, steps, force_calls, fmax)
        self._steps: deque = deque(maxlen=window)  # per-step means reported with add_steps

    # -- structures and counters -----------------------------------------------------------
    def next_structure(self):
        return self.curriculum.sample(self.rng)

    def add_steps(self, kind: str, n: int, stats: dict[str, float] | None = None) -> tuple[int, bool, int]:
        """Count ``n`` environment steps of an actor of ``kind``.

        Returns (t_total, stop requested, newest weights version): one round trip tells an
        actor everything it needs between two steps.
        """
        self.t_total += int(n)
        self.steps_by_kind[kind] = self.steps_by_kind.get(kind, 0) + int(n)
        if stats:
            self.teacher_force_calls += int(stats.get("teacher_force_calls", 0))
            self._steps.append(dict(stats, kind=kind))
        return self.t_total, self._stop, self.version

    def current_t_total(self) -> int:
        return self.t_total

    def continue_from(self, t_total: int) -> None:
        """A resumed run: t_total continues from the checkpoint's value."""
        self.t_total = self.t_start = int(t_total)

    def report_episode(self, kind: str, success: bool, steps: int, force_calls: int, fmax: float, name: str = "",
                       energy_per_atom: float | None = None) -> None:
        """One ended episode; a converged one's end energy (eV/atom) on structure ``name`` may lower its reference
        minimum (the curriculum's, for ``env.reference_tolerance``), whichever kind of actor reached it."""
        self.episodes += 1
        if success and energy_per_atom is not None:
            self.curriculum.report_minimum(name, energy_per_atom)
        self._episodes.append((kind, bool(success), int(steps), int(force_calls), float(fmax)))
        if kind == "online":  # the curriculum follows the policy's own success, not BFGS's
            self.curriculum.report(self.t_total, bool(success))
        else:
            self.curriculum.report(self.t_total, None)

    # -- weights ---------------------------------------------------------------------------------
    def publish(self, version: int, weights: Any) -> None:
        if version > self.version:
            self.version, self.weights = int(version), weights

    def weights_if_newer(self, version: int):
        """(version, weights) when newer weights than ``version`` exist, else None."""
        if self.version > version and self.weights is not None:
            return self.version, self.weights
        return None

    # -- control and statistics -----------------------------------------------------------------
    def stop(self) -> None:
        self._stop = True

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = {"t_total": self.t_total, "episodes": self.episodes,
                                 "curriculum/stage": self.curriculum.stage,
                                 "curriculum/max_atoms": self.curriculum.max_atoms,
                                 "weights_version": self.version,
                                 "actors/teacher_force_calls": self.teacher_force_calls,
                                 "curriculum/reference_minima": len(self.curriculum.minima)}
        elapsed = max(time.monotonic() - self._started, 1e-9)
        out["env_steps_per_s"] = (self.t_total - self.t_start) / elapsed
        for kind in ACTOR_KINDS:
            eps = [e for e in self._episodes if e[0] == kind]
            out[f"env_steps/{kind}"] = self.steps_by_kind.get(kind, 0)
            if eps:
                out[f"episodes/{kind}_success"] = float(np.mean([e[1] for e in eps]))
                out[f"episodes/{kind}_fmax"] = float(np.mean([e[4] for e in eps]))
                out[f"episodes/{kind}_force_calls"] = float(np.mean([e[3] for e in eps]))
        for key in ("actual_move", "a_back", "action_scale", "fmax", "reward", "episode_return", "saddle",
                    "above_reference"):
            vals = [s[key] for s in self._steps if s.get("kind") == "online" and key in s]
            if vals:
                out[f"actors/{key}"] = float(np.mean(vals))
        return out
