"""TD3 losses and helpers checked against numbers computed by hand."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from common.noise import force_noise_factor
from common.schedules import exponential, linear
from learner import td3


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_td_target_uses_min_and_ignores_truncation():
    # terminated masks the bootstrap; a truncated (not terminated) item keeps it.
    y = td3.td_target(reward=t(1.0, 2.0), terminated=t(0.0, 1.0), q1_next=t(5.0, 5.0), q2_next=t(3.0, 7.0), gamma=0.9)
    assert torch.allclose(y, t(1.0 + 0.9 * 3.0, 2.0))


def test_critic_loss_is_importance_weighted_and_priorities_average_twins():
    loss, td_abs = td3.critic_loss(q1=t(1.0, 0.0), q2=t(3.0, 0.0), target=t(2.0, 1.0), weight=t(0.5, 1.0))
    # d1 = (-1, -1), d2 = (1, -1): mean(w·d1²) + mean(w·d2²) = (0.5+1)/2 + (0.5+1)/2
    assert loss.item() == pytest.approx(1.5)
    assert torch.allclose(td_abs, t(1.0, 1.0))
    assert torch.allclose(td3.new_priorities(td_abs, 1e-3), t(1.001, 1.001))


def test_actor_loss_terms_by_hand():
    # two graphs: graph 0 has atoms 0,1 (expert item), graph 1 has atom 2 (online item)
    batch = torch.tensor([0, 0, 1])
    pi = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 2.0, 0]], dtype=torch.float64)
    actual = torch.zeros(3, 3, dtype=torch.float64)
    expert = torch.tensor([[0.0, 0, 0], [0, 0, 1.0], [5.0, 5.0, 5.0]], dtype=torch.float64)
    q1_pi = t(2.0, -1.0)
    loss, parts = td3.actor_loss(q1_pi, pi, actual, expert, is_expert=torch.tensor([True, False]), batch=batch,
                                 lambda_dev=0.5, lambda_bc=2.0)
    dev = [(1.0 + 0.0) / 2, 4.0]  # per-graph mean ‖π − a_actual‖²
    bc = [(1.0 + 1.0) / 2, 0.0]  # expert only; the online item's far-away a_expert must not count
    expected = ((-2.0 + 0.5 * dev[0] + 2.0 * bc[0]) + (1.0 + 0.5 * dev[1] + 0.0)) / 2
    assert loss.item() == pytest.approx(expected)
    assert parts["bc"].item() == pytest.approx(1.0)
    # learner.actor_q_weight = 0 (the ablation): the critic's term is gone, the penalties stay
    q = q1_pi.clone().requires_grad_(True)
    loss0, _ = td3.actor_loss(q, pi, actual, expert, is_expert=torch.tensor([True, False]), batch=batch,
                              lambda_dev=0.5, lambda_bc=2.0, q_weight=0.0)
    assert loss0.item() == pytest.approx(((0.5 * dev[0] + 2.0 * bc[0]) + 0.5 * dev[1]) / 2)
    loss0.backward()
    assert float(q.grad.abs().sum()) == 0.0


def test_bound_norm_keeps_direction_and_caps_length():
    a = torch.tensor([[3.0, 4.0, 0.0], [0.01, 0.0, 0.0]], dtype=torch.float64)
    b = td3.bound_norm(a, 0.5)
    assert torch.allclose(b[0], t(0.3, 0.4, 0.0))
    assert torch.allclose(b[1], a[1])


def test_target_action_noise_is_clipped_and_bounded():
    g = torch.Generator().manual_seed(0)
    pi = torch.zeros(1000, 3, dtype=torch.float64)
    a = td3.target_action(pi, noise_std=1.0, noise_clip=0.05, max_step=0.2, generator=g)
    assert a.abs().max().item() <= 0.05 + 1e-12
    assert a.std().item() > 0.02  # noise is there
    big = td3.target_action(torch.full((10, 3), 1.0, dtype=torch.float64), 0.0, 0.0, 0.2)
    assert torch.allclose(big.norm(dim=-1), torch.full((10,), 0.2, dtype=torch.float64))


def test_target_noise_scales_with_each_atoms_force_like_the_exploration_noise():
    pi = torch.zeros(3, 3, dtype=torch.float64)
    forces = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.4, 0.0], [3.0, 0.0, 4.0]], dtype=torch.float64)  # |F| 0, 0.5, 5
    unscaled = td3.target_action(pi, 0.02, 0.05, 0.2, torch.Generator().manual_seed(1))
    scaled = td3.target_action(pi, 0.02, 0.05, 0.2, torch.Generator().manual_seed(1), forces=forces, force_scale=1.0)
    assert unscaled.abs().min().item() > 0  # every atom got noise
    assert torch.equal(scaled[0], torch.zeros(3, dtype=torch.float64))  # no force: no kick at a minimum
    assert torch.allclose(scaled[1], 0.5 * unscaled[1])  # |F| / scale = 0.5
    assert torch.allclose(scaled[2], unscaled[2])  # above the scale: the full noise
    off = td3.target_action(pi, 0.02, 0.05, 0.2, torch.Generator().manual_seed(1), forces=forces, force_scale=0.0)
    assert torch.equal(off, unscaled)



def test_force_noise_factor_is_the_same_rule_for_numpy_actors_and_torch_learner():
    forces = np.array([[0.0, 0.0, 0.0], [0.3, 0.4, 0.0], [3.0, 0.0, 4.0]])  # |F| 0, 0.5, 5 eV/Å
    on_numpy = force_noise_factor(forces, 1.0)
    on_torch = force_noise_factor(torch.as_tensor(forces), 1.0)
    assert isinstance(on_numpy, np.ndarray) and isinstance(on_torch, torch.Tensor)
    assert on_numpy.shape == (3, 1) and tuple(on_torch.shape) == (3, 1)
    np.testing.assert_allclose(on_numpy[:, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(on_torch.numpy(), on_numpy)
    np.testing.assert_allclose(force_noise_factor(forces, 2.0)[:, 0], [0.0, 0.25, 1.0])

def test_polyak_update():
    src, tgt = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        src.weight.fill_(1.0), tgt.weight.fill_(0.0)
    td3.polyak_update(tgt, src, tau=0.1)
    assert torch.allclose(tgt.weight, torch.full_like(tgt.weight, 0.1))


class _TinyActor(nn.Module):
    """A per-atom linear map of forces: enough to exercise td3_update's plumbing."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))

    def forward(self, graph):
        return self.scale * graph.forces


class _TinyTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, -1.0]))

    def forward(self, graph, action):
        s = td3.per_graph_mean((graph.forces * action).sum(-1), graph.batch, graph.n_graphs)
        return self.w[0] * s, self.w[1] * s + 0.5


def _batch():
    graph = SimpleNamespace(forces=torch.randn(5, 3), batch=torch.tensor([0, 0, 1, 1, 1]), n_graphs=2)
    return td3.TD3Batch(graph=graph, next_graph=graph, action=torch.randn(5, 3), actual_move=torch.zeros(5, 3),
                        expert_action=torch.zeros(5, 3), is_expert=torch.tensor([True, False]),
                        reward=torch.tensor([1.0, -1.0]), terminated=torch.tensor([0.0, 1.0]),
                        weight=torch.ones(2))


def test_td3_update_changes_critic_always_and_actor_only_when_delayed():
    torch.manual_seed(0)
    actor, critic = _TinyActor(), _TinyTwin()
    actor_t, critic_t = copy.deepcopy(actor), copy.deepcopy(critic)
    opt_a = torch.optim.SGD(actor.parameters(), lr=0.1)
    opt_c = torch.optim.SGD(critic.parameters(), lr=0.1)
    h = td3.TD3Hyper(gamma=0.9, tau=0.5, target_noise=0.01, target_noise_clip=0.02, max_step=0.2, lambda_dev=1.0,
                     grad_clip=0.0)
    b = _batch()
    w0, s0 = critic.w.clone(), actor.scale.clone()
    logs, td_abs = td3.td3_update(b, actor, critic, actor_t, critic_t, opt_a, opt_c, h, lambda_bc=1.0,
                                  update_actor=False)
    assert not torch.equal(critic.w, w0) and torch.equal(actor.scale, s0)
    assert torch.equal(critic_t.w, w0)  # targets move only with the actor
    assert td_abs.shape == (2,) and "losses/actor" not in logs
    logs, _ = td3.td3_update(b, actor, critic, actor_t, critic_t, opt_a, opt_c, h, lambda_bc=1.0, update_actor=True)
    assert not torch.equal(actor.scale, s0)
    assert "losses/actor" in logs and not torch.equal(critic_t.w, w0)


def test_deviation_penalty_is_the_distance_to_the_corrected_proposal():
    """λ_dev·‖π(s) − c(π(s))‖²: zero for moves the environment keeps, the taken-back part otherwise;
    the replayed (noisy or expert) move no longer enters it."""
    h = td3.TD3Hyper(gamma=0.9, tau=0.5, target_noise=0.0, target_noise_clip=0.0, max_step=0.2, lambda_dev=1.0,
                     grad_clip=0.0)

    def run(correct):
        torch.manual_seed(0)
        actor, critic = _TinyActor(), _TinyTwin()
        b = _batch()
        b.actual_move = torch.randn(5, 3)  # whatever was applied to the replayed move: irrelevant now
        opts = torch.optim.SGD(actor.parameters(), lr=0.0), torch.optim.SGD(critic.parameters(), lr=0.0)
        logs, _ = td3.td3_update(b, actor, critic, copy.deepcopy(actor), copy.deepcopy(critic), *opts, h,
                                 lambda_bc=0.0, update_actor=True, correct=correct)
        return logs["losses/deviation"], 0.1 * b.graph.forces, b.graph.batch

    assert run(None)[0] == 0.0
    assert run(lambda graph, proposal: proposal.clone())[0] == 0.0
    dev, pi, batch = run(lambda graph, proposal: 0.5 * proposal)  # half of every move taken back
    expected = td3.per_graph_mean((0.5 * pi).pow(2).sum(-1), batch, 2).mean() / 0.2**2
    assert dev == pytest.approx(float(expected), rel=1e-6)


def test_schedules():
    assert linear(1.0, 0.0, 10, 5) == pytest.approx(0.5)
    assert linear(1.0, 0.0, 10, 50) == 0.0
    assert linear(1.0, 0.0, 0, 3) == 0.0
    assert exponential(1.0, 0.0, 10, 0) == 1.0 and exponential(1.0, 0.0, 10, 10) == pytest.approx(0.0, abs=1e-15)
    assert exponential(1.0, 0.0, 10, 3) < linear(1.0, 0.0, 10, 3)  # most of the change early
    assert exponential(1.0, 0.0, 0, 3) == 0.0


def test_actor_loss_normalised_units():
    # TD3+BC form: −Q/q_norm and penalties in units of max_step
    batch = torch.tensor([0])
    pi = torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64)
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    loss, _ = td3.actor_loss(t(-50.0), pi, zeros, zeros, torch.tensor([True]), batch, lambda_dev=1.0, lambda_bc=2.0,
                             q_norm=50.0, length_unit=0.2)
    assert loss.item() == pytest.approx(1.0 + 0.25 + 2.0 * 0.25)


def test_relative_bc_weighs_small_expert_steps_like_large_ones():
    batch = torch.tensor([0, 1])
    expert = torch.tensor([[0.1, 0.0, 0.0], [0.001, 0.0, 0.0]], dtype=torch.float64)
    pi = expert * 1.5  # both 50 % too long
    _, parts = td3.actor_loss(t(0.0, 0.0), pi, pi, expert, torch.tensor([True, True]), batch, lambda_dev=0.0,
                              lambda_bc=1.0, relative_bc=1e-9)
    assert parts["bc"].item() == pytest.approx(0.25, rel=1e-6)  # 0.5² for each graph, whatever the step length


def test_curvature_loss_trains_the_model_hessian_at_every_update_and_bad_gradients_are_dropped():
    """With probes in the batch the model Hessian learns between the delayed actor updates too (the critic's
    update alone would leave the actor untouched); a step whose gradient is not finite is not applied."""
    from ase.calculators.emt import EMT

    from actors.hessian import hessian_columns
    from common.config import EnvConfig, LearnerConfig, NetworkConfig
    from common.observation import Observation
    from helpers import cu_cluster
    from learner.critic import TwinCritic
    from learner.curvature import curvature_targets
    from learner.graph import batch_graphs
    from learner.heads import build_actor
    from learner.learner import actor_param_groups

    torch.manual_seed(0)
    net = NetworkConfig(channels=4, num_layers=2, num_basis=4, radial_hidden=8, actor_head="model-hessian",
                        path_history=True, step_size=0.0143)
    env = EnvConfig(history_steps=2)
    obs, probes = [], []
    for seed in (0, 1):
        atoms = cu_cluster(5, seed=seed)
        atoms.calc = EMT()
        o = Observation.from_atoms(atoms)
        o.history = np.zeros((5, 12))
        obs.append(o)
        probes.append((np.array([0, 3]), hessian_columns(atoms, EMT(), np.array([0, 3]))))
    g = batch_graphs(obs, net)
    actor, critic = build_actor(net, env), TwinCritic(net, env)
    actor_t, critic_t = copy.deepcopy(actor), copy.deepcopy(critic)
    groups = actor_param_groups(actor, LearnerConfig(actor_lr=1e-4, curvature_lr=1e-2))
    assert [len(x["params"]) for x in groups][1] == len(actor.model_hessian_readout()) and groups[1]["lr"] == 1e-2
    opt_a, opt_c = torch.optim.Adam(groups), torch.optim.Adam(critic.parameters(), lr=1e-3)
    h = td3.TD3Hyper(gamma=0.9, tau=0.5, target_noise=0.01, target_noise_clip=0.02, max_step=0.2, lambda_dev=1.0,
                     grad_clip=10.0, curvature_weight=1.0)
    b = td3.TD3Batch(graph=g, next_graph=g, action=torch.zeros(10, 3), actual_move=torch.zeros(10, 3),
                     expert_action=torch.zeros(10, 3), is_expert=torch.tensor([True, False]), reward=torch.ones(2),
                     terminated=torch.zeros(2), weight=torch.ones(2),
                     curvature=curvature_targets(probes, [5, 5]).to("cpu", torch.float32))
    edge0 = actor.edge_mlp[-1].weight.detach().clone()
    logs, _ = td3.td3_update(b, actor, critic, actor_t, critic_t, opt_a, opt_c, h, lambda_bc=1.0, update_actor=False)
    assert "losses/curvature" in logs and "losses/actor" not in logs
    assert not torch.equal(actor.edge_mlp[-1].weight, edge0)  # learned from the curvature alone
    losses = [logs["losses/curvature"]]
    for k in range(30):
        logs, _ = td3.td3_update(b, actor, critic, actor_t, critic_t, opt_a, opt_c, h, lambda_bc=1.0,
                                 update_actor=k % 2 == 1)
        losses.append(logs["losses/curvature"])
    assert losses[-1] < 0.5 * losses[0]
    before = [p.detach().clone() for p in actor.parameters()]
    actor.edge_mlp[-1].weight.register_hook(lambda grad: grad * float("nan"))  # a gradient gone bad
    logs, _ = td3.td3_update(b, actor, critic, actor_t, critic_t, opt_a, opt_c, h, lambda_bc=1.0, update_actor=True)
    assert logs.get("nonfinite") == 1.0
    assert all(torch.equal(p, q) for p, q in zip(actor.parameters(), before))  # nothing applied
