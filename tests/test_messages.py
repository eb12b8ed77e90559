"""The learner's cheaper update (learner/messages.py, ``Graph.memoized``) gives the numbers of the plain code:
e3nn's tensor product with a scatter-sum, and the edge geometry computed anew by every network."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from actors.hessian import hessian_columns
from common.config import EnvConfig, LearnerConfig, NetworkConfig
from common.observation import Observation
from helpers import cu_cluster, observe
from learner import messages, td3
from learner.blocks import InteractionBlock
from learner.critic import TwinCritic
from learner.curvature import curvature_targets
from learner.graph import Graph, batch_graphs
from learner.heads import build_actor
from learner.learner import actor_param_groups
from learner.messages import depthwise_messages, message_plan

NET = dict(channels=5, num_layers=2, num_basis=4, radial_hidden=8, path_history=True, actor_head="model-hessian",
           step_size=0.0143)
ENV = EnvConfig(history_steps=2)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # relative to the largest value compared


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch) -> None:
    """Chunks of 7 edges, so every batch here spans several chunks and ends in a partial one."""
    monkeypatch.setattr(messages, "EDGE_CHUNK", 7)
    torch.manual_seed(0)


def _observations() -> list[Observation]:
    rng = np.random.default_rng(0)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.1, seed=2)
    out = [observe(cu_cluster(5, seed=0)), observe(cu_cluster(7, seed=1)), observe(cu)]
    return [dataclasses.replace(o, history=0.02 * rng.normal(size=(o.n_atoms, 12))) for o in out]


def _plain(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose interaction blocks take e3nn's tensor product."""
    module = copy.deepcopy(module)
    for block in module.modules():
        if isinstance(block, InteractionBlock):
            block.plan = None
    return module


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() <= TOL[a.dtype] * scale


def test_lmax_1_blocks_take_the_chunked_path_and_others_e3nns() -> None:
    for lmax, planned in ((1, True), (2, False)):
        cfg = NetworkConfig(**{**NET, "lmax": lmax})
        for net in (build_actor(cfg, ENV), TwinCritic(cfg, ENV)):
            blocks = [m for m in net.modules() if isinstance(m, InteractionBlock)]
            assert blocks and all((b.plan is not None) == planned for b in blocks)
    block = TwinCritic(NetworkConfig(**NET), ENV).critic1.trunk.blocks[1]
    assert message_plan(block.tp) == block.plan  # a plan is data: the irreps and e3nn's path constants
    assert len(block.plan.consts) == 4 and block.plan.u0 == block.plan.u1 == 5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_messages_equal_e3nn_tensor_product_values_and_gradients(dtype: torch.dtype) -> None:
    cfg = NetworkConfig(**{**NET, "dtype": str(dtype).removeprefix("torch.")})
    g = batch_graphs(_observations(), cfg)
    block = TwinCritic(cfg, ENV).critic1.trunk.blocks[1]
    sh, basis, envelope = TwinCritic(cfg, ENV).critic1.trunk.edges(g)
    assert g.n_edges > 3 * messages.EDGE_CHUNK
    results = []
    for plan in (block.plan, None):
        h = torch.randn(g.n_atoms, block.irreps_in.dim, dtype=dtype, generator=torch.Generator().manual_seed(1))
        w = torch.randn(g.n_edges, block.tp.weight_numel, dtype=dtype, generator=torch.Generator().manual_seed(2))
        h.requires_grad_(True)
        w.requires_grad_(True)
        agg = depthwise_messages(plan, block.tp, h, g.edge_index, sh, w, envelope, g.n_atoms)
        (agg * torch.linspace(-1, 2, agg.numel(), dtype=dtype).reshape(agg.shape)).sum().backward()
        results.append((agg.detach(), h.grad, w.grad))
    for fast, plain in zip(*results):
        assert _close(fast, plain)


def test_harmonics_with_a_gradient_take_e3nns_path_so_position_gradients_stay_right() -> None:
    cfg = NetworkConfig(**{**NET, "dtype": "float64"})
    g = batch_graphs(_observations(), cfg)
    critic = TwinCritic(cfg, ENV).critic1
    action = 0.05 * torch.randn(g.n_atoms, 3, dtype=torch.float64)
    grads = []
    for net in (critic, _plain(critic)):
        pos = g.pos.clone().requires_grad_(True)
        net(dataclasses.replace(g, pos=pos), action).sum().backward()
        grads.append(pos.grad)
    assert grads[0].abs().max() > 0 and _close(grads[0], grads[1])


def test_edge_geometry_is_computed_once_per_batch_and_anew_for_a_new_batch() -> None:
    cfg = NetworkConfig(**{**NET, "dtype": "float64"})
    g = batch_graphs(_observations(), cfg)
    actor, critic = build_actor(cfg, ENV), TwinCritic(cfg, ENV)
    first = actor.trunk.edges.geometry(g)
    assert critic.critic2.trunk.edges.geometry(g) is first  # every network of the update reads the same tensors
    fresh = critic.critic1.trunk.edges._geometry(g)
    assert all(torch.equal(a, b) for a, b in zip(first, fresh))
    moved = dataclasses.replace(g, pos=g.pos + 0.1)  # a new graph: its own memo
    assert not torch.equal(critic.critic1.trunk.edges.geometry(moved).vectors, first.vectors)
    assert g.to(dtype=torch.float32).memoized(("x",), lambda: 1) == 1 and ("x",) not in g._memo
    pos = g.pos.clone().requires_grad_(True)  # positions with a gradient: computed anew, each pass its own graph
    with_grad = dataclasses.replace(g, pos=pos)
    assert actor.trunk.edges.geometry(with_grad) is not actor.trunk.edges.geometry(with_grad)


def _update_setup(dtype: torch.dtype):
    cfg = NetworkConfig(**{**NET, "dtype": str(dtype).removeprefix("torch.")})
    obs = _observations()
    probes = []
    for o in obs:
        atoms = Atoms(o.numbers, positions=o.positions, cell=o.cell, pbc=o.pbc)
        probes.append((np.array([0, 2]), hessian_columns(atoms, EMT(), np.array([0, 2]))))
    g = batch_graphs(obs, cfg)
    nxt = batch_graphs([dataclasses.replace(o, positions=o.positions + 0.01) for o in obs], cfg)
    rows = g.n_atoms
    rng = torch.Generator().manual_seed(3)
    batch = td3.TD3Batch(graph=g, next_graph=nxt, action=0.05 * torch.randn(rows, 3, generator=rng, dtype=dtype),
                         actual_move=torch.zeros(rows, 3, dtype=dtype), expert_action=torch.zeros(rows, 3, dtype=dtype),
                         is_expert=torch.tensor([True, False, False]), reward=torch.tensor([1.0, -0.5, 0.2], dtype=dtype),
                         terminated=torch.zeros(3, dtype=dtype), weight=torch.ones(3, dtype=dtype),
                         curvature=curvature_targets(probes, [o.n_atoms for o in obs]).to("cpu", dtype))
    return cfg, batch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_td3_updates_give_the_plain_codes_weights(dtype: torch.dtype, monkeypatch) -> None:
    """Two updates (a curvature step, then an actor update with the unrolled CG) with the chunked messages and the
    memoized edge geometry end at the weights of e3nn's path with the geometry computed by every network."""
    cfg, b = _update_setup(dtype)
    actor, critic = build_actor(cfg, ENV), TwinCritic(cfg, ENV)
    nets = {"fast": (actor, critic), "plain": (_plain(actor), _plain(critic))}
    start = [p.detach().clone() for p in actor.parameters()]
    h = td3.TD3Hyper(gamma=0.9, tau=0.1, target_noise=0.01, target_noise_clip=0.02, max_step=0.2, lambda_dev=1.0,
                     grad_clip=10.0, curvature_weight=1.0)
    weights = {}
    for name, (a, c) in nets.items():
        a_t, c_t = copy.deepcopy(a), copy.deepcopy(c)
        opt_a = torch.optim.Adam(actor_param_groups(a, LearnerConfig(actor_lr=1e-3, curvature_lr=1e-2)))
        opt_c = torch.optim.Adam(c.parameters(), lr=1e-3)
        batch = dataclasses.replace(b, graph=dataclasses.replace(b.graph), next_graph=dataclasses.replace(b.next_graph))
        if name == "plain":
            monkeypatch.setattr(Graph, "memoized", lambda self, key, make: make())
        for update_actor in (False, True):
            logs, td_abs = td3.td3_update(batch, a, c, a_t, c_t, opt_a, opt_c, h, lambda_bc=1.0,
                                          update_actor=update_actor, generator=torch.Generator().manual_seed(4))
            assert "nonfinite" not in logs
        weights[name] = [p.detach().clone() for net in (a, c, a_t, c_t) for p in net.parameters()] + [td_abs]
    assert all(_close(x, y) for x, y in zip(weights["fast"], weights["plain"]))
    assert not all(torch.equal(x, y) for x, y in zip(weights["fast"], start))  # the updates did move the actor
