"""n-step returns: what the actors store from an episode (the adder's NStepWindow), and the TD target's γ^n."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actors.adder import NStepWindow, returns_to_go
from actors.env import RelaxEnv
from actors.expert import BFGSExpert
from actors.generate import random_cluster
from common.config import EnvConfig
from common.transition import Transition
from learner import td3

GAMMA = 0.9


def episode(max_steps: int) -> list[Transition]:
    """One-step transitions of BFGS steps on a real EMT cluster, as an actor would make them."""
    env = RelaxEnv(EnvConfig(max_steps=max_steps))
    obs = env.reset(random_cluster(["Cu"] * 5, np.random.default_rng(1)))
    expert, out = BFGSExpert(maxstep=env.cfg.max_step), []
    while True:
        a = expert.action(obs)
        step = env.step(a)
        out.append(Transition(obs, a, step.info["actual_move"], step.reward, step.terminated, step.truncated,
                              step.obs, step.info["a_back"]))
        obs = step.obs
        if step.terminated or step.truncated:
            return out


@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_every_step_is_stored_once_with_its_discounted_return_over_the_next_n_steps(end):
    steps = episode(max_steps=200 if end == "terminated" else 7)
    assert getattr(steps[-1], end) and len(steps) >= 6
    n = 3
    w, stored = NStepWindow(n, GAMMA), []
    for i, t in enumerate(steps):
        ready = w.push("policy", t)
        # nothing leaves before the window is full; then one per step; the end flushes the rest
        assert len(ready) == (0 if i < n - 1 else 1) + (n - 1 if i == len(steps) - 1 else 0)
        stored += ready
    assert [t.obs for _, t in stored] == [t.obs for t in steps]  # every state once, in order
    rewards = [t.reward for t in steps]
    for i, (source, t) in enumerate(stored):
        k = min(n, len(steps) - i)
        assert source == "policy" and t.n_steps == k
        assert t.reward == pytest.approx(returns_to_go(rewards[i:i + k], GAMMA)[0], rel=1e-12)
        assert t.next_obs is steps[i + k - 1].next_obs
        assert np.array_equal(t.action, steps[i].action) and t.a_back == steps[i].a_back
        last = i + k == len(steps)  # only windows that reach the end carry its flag
        assert (t.terminated, t.truncated) == ((steps[-1].terminated, steps[-1].truncated) if last else (False, False))
    assert not w.pending


def test_one_step_window_passes_transitions_through_and_drain_loses_nothing():
    steps = episode(max_steps=200)
    w1 = NStepWindow(1, GAMMA)
    assert [w1.push("teacher", t)[0][1] for t in steps] == steps
    w = NStepWindow(4, GAMMA)
    for t in steps[:2]:  # the actor stops mid-episode, before a window is full
        assert w.push("policy", t) == []
    drained = w.drain()
    assert [t.n_steps for _, t in drained] == [2, 1] and drained[0][1].next_obs is steps[1].next_obs
    assert not drained[0][1].terminated and not drained[0][1].truncated  # bootstrapped by the learner


def test_a_step_that_cannot_be_stored_still_counts_in_the_returns_before_it():
    steps = episode(max_steps=200)[:4]
    w = NStepWindow(2, GAMMA)
    stored = []
    for i, t in enumerate(steps):
        stored += w.push("policy", t, storable=(i != 1))
    stored += w.drain()
    assert [t.obs for _, t in stored] == [steps[0].obs, steps[2].obs, steps[3].obs]
    assert stored[0][1].reward == pytest.approx(steps[0].reward + GAMMA * steps[1].reward)


def test_td_target_bootstraps_n_step_items_with_gamma_to_the_n():
    reward = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    terminated = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    q = torch.tensor([10.0, 10.0, 10.0], dtype=torch.float64)
    n = torch.tensor([1.0, 3.0, 3.0], dtype=torch.float64)
    y = td3.td_target(reward, terminated, q, q + 1, torch.pow(torch.full_like(reward, GAMMA), n))
    assert torch.allclose(y, torch.tensor([1 + GAMMA * 10, 1 + GAMMA**3 * 10, 1.0], dtype=torch.float64))


def test_online_actors_report_the_share_of_episodes_that_ended_on_a_saddle(redis_server):
    """With env.saddle_check_atoms, the episodes an online actor ends by converging carry the check's verdict
    (the demo's untrained quasi-Newton head converges small clusters); the hub reports their mean as
    actors/saddle. Without the check there is no such key."""
    from helpers import actor_loop_on_redis

    for check in (0, 16):
        actor, hub, _ = actor_loop_on_redis(
            redis_server.url, "online", Path(__file__).resolve().parents[1] / "configs" / "demo.toml",
            ["actors.insert_batch=1", "replay.samples_per_insert=0.0", f"env.saddle_check_atoms={check}",
             "env.max_steps=60"])
        records = [actor.step() for _ in range(40)]
        assert any(r.episodes for r in records)
        stats = hub.stats()
        if check:
            assert 0.0 <= stats["actors/saddle"] <= 1.0
            assert all(r.saddle is None or 0.0 <= r.saddle <= 1.0 for r in records)
            assert any(r.saddle is not None for r in records if any(e.converged for e in r.episodes))
        else:
            assert "actors/saddle" not in stats and all(r.saddle is None for r in records)


def test_converged_episodes_set_the_reference_minima_the_curriculum_hands_out(redis_server):
    """With env.reference_tolerance, each converged episode an actor ends reports its end energy per atom with the
    structure's name; the hub's curriculum keeps the lowest per structure (curriculum/reference_minima counts them)
    and the next samples of that structure carry it, so later episodes on it are judged against it."""
    from actors.env import REFERENCE_ENERGY
    from helpers import actor_loop_on_redis

    actor, hub, _ = actor_loop_on_redis(
        redis_server.url, "online", Path(__file__).resolve().parents[1] / "configs" / "demo.toml",
        ["actors.insert_batch=1", "replay.samples_per_insert=0.0", "env.reference_tolerance=1.0", "env.max_steps=60"])
    converged: dict[str, list[float]] = {}
    report = hub.report_episode

    def seen(kind, success, steps, force_calls, fmax, name="", energy_per_atom=None):
        if success:
            converged.setdefault(name, []).append(energy_per_atom)
        report(kind, success, steps, force_calls, fmax, name, energy_per_atom)

    hub.report_episode = seen
    records = [actor.step() for _ in range(40)]
    assert converged, "no episode converged: nothing to check"
    assert hub.curriculum.minima == {name: min(es) for name, es in converged.items()}
    assert hub.stats()["curriculum/reference_minima"] == len(converged)
    assert all(r.above_reference is None or 0.0 <= r.above_reference <= 1.0 for r in records)
    rng = np.random.default_rng(0)
    samples = [hub.curriculum.sample(rng) for _ in range(200)]
    assert any(s.info["name"] in converged for s in samples)
    for s in samples:
        assert s.info.get(REFERENCE_ENERGY) == hub.curriculum.minima.get(s.info["name"])


def test_exploration_noise_shrinks_with_each_atoms_force():
    """The online actors' noise is σ·min(1, |F_i| / actors.noise_force_scale) per atom: an atom without force
    gets no kick, one at half the scale half of it, the same Gaussian draws otherwise."""
    import dataclasses

    from actors.loop import PolicyWithNoise
    from common.config import load_config
    from learner.policy import Policy

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.toml",
                      ["actors.sigma_start=0.03", "actors.sigma_end=0.03", "actors.noise_force_scale=1.0"])
    env = RelaxEnv(cfg.env)
    obs = env.reset(random_cluster(["Cu"] * 5, np.random.default_rng(3)))
    forces = np.zeros((5, 3))
    forces[1] = [0.3, 0.4, 0.0]  # |F| 0.5
    forces[2:] = [[3.0, 0.0, 4.0]] * 3  # |F| 5, above the scale
    obs = dataclasses.replace(obs, forces=forces)
    policy = Policy(cfg)
    greedy = policy.act_batch([obs])[0]
    moves, _ = PolicyWithNoise(policy, cfg.actors, np.random.default_rng(7)).noisy_moves([obs], t_total=0)
    draws = np.random.default_rng(7).normal(0.0, 1.0, size=(5, 3)) * 0.03
    noise = moves[0] - greedy
    np.testing.assert_allclose(noise[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(noise[1], 0.5 * draws[1], atol=1e-12)
    np.testing.assert_allclose(noise[2:], draws[2:], atol=1e-12)


def test_an_n_step_transition_keeps_the_curvature_probes_and_expert_move_of_its_first_step():
    steps = episode(max_steps=200)[:5]
    for i, t in enumerate(steps):
        n = t.obs.n_atoms
        t.probe_atoms = np.array([i % n])
        t.probe_columns = np.full((1, n, 3, 3), float(i))
        t.expert_action = np.full((n, 3), float(i))
    w = NStepWindow(3, GAMMA)
    stored = [t for s in steps for _, t in w.push("teacher", s)] + [t for _, t in w.drain()]
    assert len(stored) == 5
    for i, t in enumerate(stored):  # the state, its probes and its expert move belong together
        assert t.obs is steps[i].obs and t.probe_atoms.tolist() == [i % t.obs.n_atoms]
        assert float(t.probe_columns.max()) == float(i) and float(t.expert_action.max()) == float(i)
