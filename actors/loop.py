"""The actor loop: environments stepped together, their transitions handed to the adder.

An :class:`ActorLoop` is three small parts around a list of :class:`RelaxEnv` (Acme's shape);
``step()`` reads act → step → add → record:

- an *action source* chooses every environment's move and its source (``teacher`` or
  ``policy``): :class:`PolicyWithNoise` (online actors: the current policy plus Gaussian
  exploration noise whose σ decays with t_total) or :class:`TeacherOrPolicy` (expert actors: the
  ``expert.teacher``'s fake step (one BFGS iteration with the default teacher), with the probability p(t_total)
  of the ``nfake`` schedule where the teacher offers one, with ``a_expert`` filled; the policy
  plus noise otherwise);
- one *adder* (:class:`actors.adder.ReplayAdder`): the n-step windows, and the tables each
  source goes to (``replay.tables``' ``source``), inserted in batches through the replay client;
- a *hub* (``actors.coordinator.Coordinator`` or the Ray adapter of it): structures,
  weights, counters.

``step()`` returns a :class:`StepRecord`; the Ray wrapper (``actors.ray_actors``) only turns
it into metrics. No Ray here.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from actors.adder import ReplayAdder, returns_to_go
from actors.calculators import make_calculator
from actors.env import RelaxEnv, StepResult
from actors.expert import Teacher, fake_step_probability, make_teacher
from actors.hessian import CurvatureProbe
from common.config import ActorConfig, ExpertConfig
from common.names import ACTOR_KINDS, POLICY, TEACHER
from common.noise import force_noise_factor
from common.observation import Observation
from common.schedules import linear
from common.transition import Transition
from learner.graph import with_neighbor_list
from learner.policy import Policy

__all__ = ["ActorLoop", "Actions", "EpisodeEnd", "PolicyWithNoise", "StepRecord", "TeacherOrPolicy"]


# ----------------------------------------------------------------------------- what a step produces

@dataclass(frozen=True)
class Actions:
    """One move per environment, from an action source."""

    moves: list[np.ndarray]  # [n_i, 3] Å per environment (may be non-finite if the policy diverged)
    sources: list[str]  # 'teacher' (a fake step) or 'policy', per environment: where the adder sends its transition
    expert_moves: list[np.ndarray | None]  # a_expert (the teacher's step) where the move is a fake step
    action_scale: float | None  # mean env gate of the policy forward (None: no policy move this step)


@dataclass(frozen=True)
class EpisodeEnd:
    """An episode that ended on this step."""

    converged: bool
    steps: int
    force_calls: int
    fmax: float  # eV/Å, final


@dataclass(frozen=True)
class StepRecord:
    """One step of all of an actor's environments: per-step means over them and the episodes that ended."""

    kind: str  # 'online' or 'expert' (the actor's kind)
    n_envs: int
    actual_move: float  # Å, mean per-atom norm of the applied move
    a_back: float  # mean fraction of the move taken back
    reward: float
    fmax: float  # eV/Å
    action_scale: float | None
    episodes: tuple[EpisodeEnd, ...]
    success_rate: float  # share of this actor's last 50 episodes that converged
    nonfinite_actions: int  # moves that were NaN/inf: applied as no move, not stored
    episode_return: float | None = None  # mean_return_to_go of the episodes that ended (None: none ended)
    saddle: float | None = None  # share of the ended episodes the saddle check found on a saddle (None: none checked)
    above_reference: float | None = None  # share of the ended episodes judged above their reference minimum (None: none)
    teacher_force_calls: int = 0  # force calls the teachers made during this step, beyond the environments'

    def stats(self) -> dict[str, float]:
        """The means the hub aggregates (``actors/...`` in metrics.jsonl), and the teachers' force calls it sums."""
        s = {"actual_move": self.actual_move, "a_back": self.a_back, "reward": self.reward, "fmax": self.fmax,
             "teacher_force_calls": self.teacher_force_calls}
        for key in ("action_scale", "episode_return", "saddle", "above_reference"):  # the means a step may not have
            if getattr(self, key) is not None:
                s[key] = getattr(self, key)
        return s


def mean_return_to_go(rewards: Sequence[float], gamma: float) -> float:
    """Mean over an episode's steps t of the observed discounted return G_t = Σ_k γ^k r_{t+k}.

    What Q(s_t, a_t) estimates, averaged over the states an episode visits (as a replay batch
    averages Q over stored transitions); a truncated episode has no bootstrap tail, so G_t is
    then a lower estimate for rewards ≤ 0."""
    return sum(returns_to_go(rewards, gamma)) / len(rewards) if rewards else 0.0


# ----------------------------------------------------------------------------- action sources

class ActionSource(Protocol):
    @property
    def force_calls(self) -> int:
        """Force calls the source made so far beyond the environments' (a teacher's), for training only."""

    def reset(self, i: int) -> None:
        """Environment ``i`` starts a new episode."""

    def act(self, observations: Sequence[Observation], t_total: int) -> Actions:
        """A move for every observation."""


class PolicyWithNoise:
    """The policy's displacement plus noise σ(t_total)·min(1, |F_i| / noise_force_scale) per atom."""

    force_calls = 0
    """The policy's moves cost no force calls beyond the environments'."""

    def __init__(self, policy: Policy, cfg: ActorConfig, rng: np.random.Generator):
        self.policy, self.cfg, self.rng = policy, cfg, rng

    def sigma(self, t_total: int) -> float:
        """Exploration noise standard deviation, Å."""
        return linear(self.cfg.sigma_start, self.cfg.sigma_end, self.cfg.sigma_decay_steps, t_total)

    def reset(self, i: int) -> None:
        pass

    def noisy_moves(self, observations: Sequence[Observation], t_total: int) -> tuple[list[np.ndarray], float | None]:
        """(one batched policy forward + noise per observation, mean env gate); ([], None) for no observations."""
        if not observations:
            return [], None
        acts, scales = self.policy.act_batch(observations, return_scale=True)
        sigma, f_ref = self.sigma(t_total), self.cfg.noise_force_scale
        moves = []
        for obs, a in zip(observations, acts):
            scale = sigma * force_noise_factor(obs.row_forces(), f_ref) if f_ref > 0 else sigma  # [n_rows, 1] or scalar
            moves.append(a + self.rng.normal(0.0, 1.0, size=a.shape) * scale)
        return moves, float(np.mean(scales))

    def act(self, observations: Sequence[Observation], t_total: int) -> Actions:
        moves, scale = self.noisy_moves(observations, t_total)
        n = len(observations)
        return Actions(moves, [POLICY] * n, [None] * n, scale)


class TeacherOrPolicy:
    """Per environment: a fake step (the ``expert.teacher``'s; one BFGS iteration with the default teacher) with probability
    p(t_total) where the teacher offers one, else the policy plus noise. ``teachers`` holds one
    :class:`~actors.expert.Teacher` per environment."""

    def __init__(self, policy: PolicyWithNoise, teachers: Sequence[Teacher], cfg: ExpertConfig,
                 rng: np.random.Generator):
        self.policy, self.cfg, self.rng = policy, cfg, rng
        self.teachers = list(teachers)

    @property
    def force_calls(self) -> int:
        """The teachers' force calls so far (their training-only cost), summed over the environments."""
        return sum(int(t.force_calls) for t in self.teachers)

    def reset(self, i: int) -> None:
        self.teachers[i].reset()

    def act(self, observations: Sequence[Observation], t_total: int) -> Actions:
        p = fake_step_probability(t_total, self.cfg)
        sources = [TEACHER if self.rng.random() < p and self.teachers[k].offers(o) else POLICY
                   for k, o in enumerate(observations)]
        policy = [k for k, s in enumerate(sources) if s == POLICY]
        noisy, scale = self.policy.noisy_moves([observations[k] for k in policy], t_total)
        by_env = dict(zip(policy, noisy))
        expert_moves = [self.teachers[k].action(o) if s == TEACHER else None
                        for k, (o, s) in enumerate(zip(observations, sources))]
        moves = [by_env[k] if s == POLICY else expert_moves[k] for k, s in enumerate(sources)]
        return Actions(moves, sources, expert_moves, scale)


# ----------------------------------------------------------------------------- the loop

class ActorLoop:
    """``kind`` 'online' (policy + noise) or 'expert' (the teacher's fake step with probability p(t_total), else
    policy + noise)."""

    def __init__(self, kind: str, config, writer, hub, actor_id: int = 0, seed: int = 0):
        if kind not in ACTOR_KINDS:
            raise ValueError(f"actor kind must be one of {', '.join(map(repr, ACTOR_KINDS))}, got {kind!r}")
        self.kind, self.config, self.hub, self.actor_id = kind, config, hub, actor_id
        rng = np.random.default_rng([seed, actor_id, 7919])
        n = config.actors.envs_per_actor
        self.envs = [RelaxEnv(config.env) for _ in range(n)]
        self.policy = Policy(config, device="cpu")
        noisy = PolicyWithNoise(self.policy, config.actors, rng)
        self.source: ActionSource = noisy if kind == "online" else TeacherOrPolicy(
            noisy, [make_teacher(config.expert, env, config.env.max_step, config.network)
                    for env in self.envs], config.expert, rng)
        self._stopping = threading.Event()  # request_stop(), from another thread while run() loops
        self.probes = ([CurvatureProbe(config.expert.curvature_probes, self._probe_calculator, rng) for _ in self.envs]
                       if kind == "expert" and config.expert.curvature_probes > 0 else None)
        self.adder = ReplayAdder(writer, config.replay.tables, n, config.learner.n_step, config.learner.gamma,
                                 config.actors.insert_batch, stop=self._stopping.is_set)
        self.obs: list[Observation | None] = [None] * n
        self.t_total = 0
        self.steps = 0
        self.stop_requested = False
        self.latest_version: int | None = None  # newest version the hub announced (None = ask)
        self.nonfinite_actions = 0  # total of StepRecord.nonfinite_actions
        self._recent: deque[bool] = deque(maxlen=50)
        self._rewards: list[list[float]] = [[] for _ in range(n)]  # this episode's rewards, per environment

    def sync_weights(self) -> bool:
        """Pull the newest weights when the hub announced a version newer than ours."""
        if self.latest_version is not None and self.latest_version <= self.policy.version:
            return False
        got = self.hub.weights_if_newer(self.policy.version)
        if got is None:
            return False
        version, state = got
        self.policy.load_weights(state, version)
        return True

    def _reset(self, i: int) -> None:
        # neighbour lists are built here, once per state, and travel with the transition
        # (docs/BENCHMARKS.md: cheaper than on the learner)
        self.obs[i] = with_neighbor_list(self.envs[i].reset(self.hub.next_structure()), self.config.network)
        self._rewards[i] = []
        self.source.reset(i)

    def success_rate(self) -> float:
        """Share of this actor's last 50 episodes that converged."""
        return sum(self._recent) / len(self._recent) if self._recent else 0.0

    def step(self) -> StepRecord:
        """Every environment once: act (one batched policy forward), step, add to the replay, record."""
        for i, o in enumerate(self.obs):
            if o is None:
                self._reset(i)
        calls_before = self.source.force_calls + self._probe_force_calls()
        actions = self.source.act(self.obs, self.t_total)
        probes = [self._probe(i) for i in range(len(self.envs))]
        teacher_calls = self.source.force_calls + self._probe_force_calls() - calls_before
        results = [self._step_and_add(i, actions, probes[i]) for i in range(len(self.envs))]
        return self._record(actions, results, teacher_calls)

    def _probe_calculator(self):
        return make_calculator(self.config.env.calculator, self.config.env.calculator_kwargs)

    def _probe_force_calls(self) -> int:
        return sum(p.force_calls for p in self.probes) if self.probes else 0

    def _probe(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Environment ``i``'s curvature probe at its current state (``expert.curvature_probes``; expert actors only),
        reusing the teacher's Hessian when it just took one there."""
        if self.probes is None:
            return None
        teachers = getattr(self.source, "teachers", None)
        last = getattr(teachers[i], "last_hessian", None) if teachers else None
        return self.probes[i].measure(self.envs[i].atoms, self.obs[i].free, last)

    def _step_and_add(self, i: int, actions: Actions, probe: tuple[np.ndarray, np.ndarray] | None = None) -> StepResult:
        """Environment ``i`` takes its move; the transition goes to the adder under the move's source."""
        obs, res = self.obs[i], self.envs[i].step(actions.moves[i])
        next_obs = with_neighbor_list(res.obs, self.config.network)
        action = np.asarray(actions.moves[i], dtype=np.float64)
        # a diverged policy (non-finite move): the env applied no move; the step is not stored (the codec refuses
        # NaN) but its reward counts in the n-step returns of the steps before it
        self.adder.add(i, actions.sources[i], Transition(
            obs=obs, action=action, actual_move=res.info["actual_move"], reward=float(res.reward),
            terminated=bool(res.terminated), truncated=bool(res.truncated), next_obs=next_obs,
            a_back=float(res.info["a_back"]), expert_action=actions.expert_moves[i],
            probe_atoms=probe[0] if probe else None, probe_columns=probe[1] if probe else None),
            storable=bool(np.isfinite(action).all()))
        self._rewards[i].append(float(res.reward))
        self.obs[i] = None if res.terminated or res.truncated else next_obs
        return res

    def _record(self, actions: Actions, results: list[StepResult], teacher_calls: int) -> StepRecord:
        """The step's means, ended episodes and teacher force calls, reported to the hub (which answers t_total,
        stop, newest version)."""
        infos = [r.info for r in results]
        ended = [i for i, r in enumerate(results) if r.terminated or r.truncated]
        episodes = [self._end_episode(infos[i], self.envs[i].name) for i in ended]
        returns = [mean_return_to_go(self._rewards[i], self.config.learner.gamma) for i in ended]

        def share(key: str) -> float | None:
            """Mean of a verdict the env gave some ended episodes (``info[key]``, True = 1), None when none had it."""
            verdicts = [float(infos[i][key]) for i in ended if key in infos[i]]
            return float(np.mean(verdicts)) if verdicts else None

        nonfinite = sum(not np.isfinite(np.asarray(m, dtype=np.float64)).all() for m in actions.moves)
        self.steps += len(self.envs)
        self.nonfinite_actions += nonfinite
        record = StepRecord(
            kind=self.kind, n_envs=len(self.envs), actual_move=float(np.mean([x["actual_move_norm"] for x in infos])),
            a_back=float(np.mean([x["a_back"] for x in infos])), reward=float(np.mean([r.reward for r in results])),
            fmax=float(np.mean([x["fmax"] for x in infos])), action_scale=actions.action_scale,
            episodes=tuple(episodes), success_rate=self.success_rate(), nonfinite_actions=nonfinite,
            episode_return=float(np.mean(returns)) if returns else None,
            saddle=share("saddle"), above_reference=share("above_reference"), teacher_force_calls=teacher_calls)
        self.t_total, stop, self.latest_version = self.hub.add_steps(self.kind, len(self.envs), record.stats())
        self.stop_requested = stop or self._stopping.is_set()
        return record

    def request_stop(self) -> None:
        """Stop :meth:`run` after the current step (thread-safe; also ends an insert waiting for the rate limiter)."""
        self._stopping.set()
        self.stop_requested = True

    def _end_episode(self, info: dict, name: str) -> EpisodeEnd:
        end = EpisodeEnd(bool(info["converged"]), int(info["steps"]), int(info["force_calls"]), float(info["fmax"]))
        self._recent.append(end.converged)
        # a converged end's energy may lower the structure's reference minimum (env.reference_tolerance), unless the
        # saddle check found it on a saddle point
        minimum = None if info.get("saddle") else float(info["energy_per_atom"])
        self.hub.report_episode(self.kind, end.converged, end.steps, end.force_calls, end.fmax, name, minimum)
        return end

    def run(self, max_steps: int = 0, on_step: Callable[[StepRecord], None] | None = None) -> int:
        """Step until the hub says stop or :meth:`request_stop` (or ``max_steps`` environment steps); returns steps
        taken. What the adder still holds is inserted, as far as the rate limiter allows at once when stopping."""
        start = self.steps
        try:
            while not (self.stop_requested or self._stopping.is_set()):
                if max_steps and self.steps - start >= max_steps:
                    break
                self.sync_weights()
                record = self.step()
                if on_step is not None:
                    on_step(record)
        finally:
            self.adder.close()
        return self.steps - start
