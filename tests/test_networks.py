"""E(3) equivariance and structure of the e3nn actor and critic (learner/networks.py), float64."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import cu_cluster as _cu_cluster, observe
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from e3nn import o3
from e3nn.util.test import assert_equivariant

from common.observation import Observation
from learner.graph import Graph, batch_graphs
from learner.networks import (
    Actor,
    Critic,
    InteractionBlock,
    IrrepsMismatchError,
    NetworkConfig,
    NetworkConfigError,
    TwinCritic,
    check_irreps,
    scatter_mean,
)

# Small but complete networks: every code path of the default, at a fraction of its cost.
SMALL = dict(channels=6, num_layers=2, num_basis=4, radial_hidden=8, tail_hidden=8, dtype="float64")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def cu_cluster(n: int, seed: int) -> Atoms:
    return _cu_cluster(n, seed, with_ni=True)


def clusters(env_dim: int = 0, sizes: tuple[int, ...] = (5, 8)) -> list[Observation]:
    rng = np.random.default_rng(1)
    return [observe(cu_cluster(n, seed=k), rng.normal(size=env_dim)) for k, n in enumerate(sizes)]


def with_tensors(g: Graph, pos: torch.Tensor, forces: torch.Tensor, cell: torch.Tensor | None = None) -> Graph:
    return dataclasses.replace(g, pos=pos, forces=forces, cell=g.cell if cell is None else cell)


@pytest.mark.parametrize("env_dim,lmax", [(0, 1), (2, 1), (0, 2)])
def test_actor_is_equivariant_e3nn_helper(env_dim: int, lmax: int) -> None:
    cfg = NetworkConfig(env_input_dim=env_dim, **{**SMALL, "lmax": lmax})
    g = batch_graphs(clusters(env_dim), cfg)
    actor = Actor(cfg)
    # rotation, inversion and translation: positions are points, forces and displacements 1o
    assert_equivariant(
        lambda pos, f: actor(with_tensors(g, pos, f)),
        args_in=[g.pos, g.forces],
        irreps_in=["cartesian_points", o3.Irreps("1o")],
        irreps_out=[o3.Irreps("1o")],
    )


@pytest.mark.parametrize("env_dim", [0, 2])
def test_critic_is_invariant_e3nn_helper(env_dim: int) -> None:
    cfg = NetworkConfig(env_input_dim=env_dim, **SMALL)
    g = batch_graphs(clusters(env_dim), cfg)
    critic = Critic(cfg)
    action = 0.1 * torch.randn(g.n_atoms, 3, dtype=torch.float64)
    assert_equivariant(
        lambda pos, f, a: critic(with_tensors(g, pos, f), a).unsqueeze(-1),  # [G, 1] of 0e
        args_in=[g.pos, g.forces, action],
        irreps_in=["cartesian_points", o3.Irreps("1o"), o3.Irreps("1o")],
        irreps_out=[o3.Irreps("0e")],
    )


def rotated(obs: Observation, rot: np.ndarray, shift: np.ndarray) -> Observation:
    """Apply x → rot x + shift to an observation (cell rows rotate too; rot may include −1)."""
    return dataclasses.replace(
        obs,
        positions=obs.positions @ rot.T + shift,
        cell=obs.cell @ rot.T,
        forces=obs.forces @ rot.T,
        edge_index=None,
        edge_shift=None,
    )


@pytest.mark.parametrize("parity", [1.0, -1.0], ids=["rotation", "rotation+inversion"])
def test_periodic_crystal_rotation_inversion_translation(parity: float) -> None:
    """Neighbour lists rebuilt from the transformed crystal: d → R d, Q unchanged."""
    cfg = NetworkConfig(env_input_dim=1, radius=4.0, **SMALL)
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    crystal.rattle(0.1, seed=4)
    obs = observe(crystal, np.array([0.3]))
    rot = parity * o3.rand_matrix(dtype=torch.float64).numpy()
    obs2 = rotated(obs, rot, np.array([0.7, -1.2, 3.0]))
    actor, critic = Actor(cfg), TwinCritic(cfg)
    g, g2 = batch_graphs([obs], cfg), batch_graphs([obs2], cfg)
    d, d2 = actor(g), actor(g2)
    torch.testing.assert_close(d2, d @ torch.from_numpy(rot).T, atol=1e-10, rtol=0)
    for q, q2 in zip(critic(g, d), critic(g2, d2)):
        torch.testing.assert_close(q2, q, atol=1e-10, rtol=0)


def test_permutation_equivariance() -> None:
    cfg = NetworkConfig(**SMALL)
    obs = clusters(sizes=(8,))[0]
    perm = np.random.default_rng(0).permutation(8)
    obs_p = dataclasses.replace(
        obs, positions=obs.positions[perm], numbers=obs.numbers[perm], forces=obs.forces[perm]
    )
    actor, critic = Actor(cfg), Critic(cfg)
    g, gp = batch_graphs([obs], cfg), batch_graphs([obs_p], cfg)
    d, dp = actor(g), actor(gp)
    torch.testing.assert_close(dp, d[perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(critic(gp, dp), critic(g, d), atol=1e-12, rtol=0)


def test_supercell_gives_the_same_per_atom_outputs() -> None:
    """A rattled periodic cell and its 2x2x2 repeat: same displacements per atom, same Q (mean pool)."""
    cfg = NetworkConfig(radius=4.5, max_neighbors=1000, **SMALL)  # no cap: ties would cut differently
    prim = bulk("Cu", "fcc", a=3.61, cubic=True)
    prim.numbers[1] = 28
    prim.rattle(0.1, seed=7)
    sup = prim.repeat((2, 2, 2))  # atom order: 8 copies of the primitive atoms
    o_prim, o_sup = observe(prim), observe(sup)
    np.testing.assert_allclose(o_sup.forces, np.tile(o_prim.forces, (8, 1)), atol=1e-10)
    actor, critic = Actor(cfg), Critic(cfg)
    g_prim, g_sup = batch_graphs([o_prim], cfg), batch_graphs([o_sup], cfg)
    d_prim, d_sup = actor(g_prim), actor(g_sup)
    torch.testing.assert_close(d_sup, d_prim.repeat(8, 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(critic(g_sup, d_sup), critic(g_prim, d_prim), atol=1e-10, rtol=0)


def test_no_env_features_means_no_gate_and_no_tail() -> None:
    cfg = NetworkConfig(env_input_dim=0, **SMALL)
    g = batch_graphs(clusters(), cfg)
    actor, critic = Actor(cfg), Critic(cfg)
    assert actor.env_gate is None
    assert not any("env_gate" in name for name, _ in actor.named_parameters())
    d, scale = actor(g, return_scale=True)
    assert torch.equal(d, actor.ungated(g))
    assert torch.equal(scale, torch.ones(g.n_graphs, dtype=torch.float64))
    assert critic.tail_mlp is None
    assert not any("tail_mlp" in name for name, _ in critic.named_parameters())
    # Q is exactly the pooled per-atom scalar of the head
    node = critic.trunk(critic.node_input(g, d), g)
    pooled = scatter_mean(critic.head(node), g.batch, g.num_atoms_per_graph).squeeze(-1)
    torch.testing.assert_close(critic(g, d), pooled, atol=1e-14, rtol=0)


def test_env_features_gate_the_actor_and_feed_the_tail() -> None:
    cfg = NetworkConfig(env_input_dim=3, **SMALL)
    g = batch_graphs(clusters(3), cfg)
    actor, critic = Actor(cfg), Critic(cfg)
    d, scale = actor(g, return_scale=True)
    assert scale.shape == (2,) and bool(((scale > 0) & (scale < 1)).all())
    torch.testing.assert_close(d, actor.ungated(g) * scale[g.batch, None])
    q = critic(g, d)
    g_other = dataclasses.replace(g, env_features=g.env_features + 1.0)
    assert critic.tail_mlp is not None and not torch.allclose(critic(g_other, d), q)


def test_displacements_are_bounded_by_max_step() -> None:
    cfg = NetworkConfig(max_step=0.15, **SMALL)
    g = batch_graphs(clusters(), cfg)
    g = dataclasses.replace(g, forces=g.forces * 1e4)  # absurd forces
    d = Actor(cfg)(g)
    assert torch.isfinite(d).all() and float(d.detach().norm(dim=1).max()) < 0.15


@pytest.mark.parametrize("env_dim", [0, 2])
def test_per_atom_values_sum_to_q(env_dim: int) -> None:
    cfg = NetworkConfig(env_input_dim=env_dim, per_atom_q=True, **SMALL)
    g = batch_graphs(clusters(env_dim), cfg)
    critic = Critic(cfg)
    a = 0.05 * torch.randn(g.n_atoms, 3, dtype=torch.float64)
    q, per_atom = critic(g, a, return_per_atom=True)
    assert per_atom.shape == (g.n_atoms,)
    torch.testing.assert_close(torch.zeros(2, dtype=torch.float64).index_add_(0, g.batch, per_atom), q)
    with pytest.raises(ValueError, match="per_atom_q"):
        Critic(dataclasses.replace(cfg, per_atom_q=False))(g, a, return_per_atom=True)


@pytest.mark.parametrize("env_dim", [0, 2])
def test_gradients_reach_every_parameter(env_dim: int) -> None:
    cfg = NetworkConfig(env_input_dim=env_dim, **SMALL)
    g = batch_graphs(clusters(env_dim), cfg)
    actor, critic = Actor(cfg), TwinCritic(cfg)
    q1, q2 = critic(g, actor(g))
    (q1.sum() + q2.sum()).backward()
    for name, p in list(actor.named_parameters()) + list(critic.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"{name} gets no gradient"


def test_float32_matches_float64() -> None:
    cfg64 = NetworkConfig(env_input_dim=2, **SMALL)
    cfg32 = dataclasses.replace(cfg64, dtype="float32")
    obs = clusters(2)
    g64, g32 = batch_graphs(obs, cfg64), batch_graphs(obs, cfg32)
    assert g32.pos.dtype == torch.float32
    actor64, critic64 = Actor(cfg64), Critic(cfg64)
    actor32, critic32 = Actor(cfg32), Critic(cfg32)
    actor32.load_state_dict({k: v.float() for k, v in actor64.state_dict().items()})
    critic32.load_state_dict({k: v.float() for k, v in critic64.state_dict().items()})
    d64, d32 = actor64(g64), actor32(g32)
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, atol=1e-4, rtol=0)
    torch.testing.assert_close(critic32(g32, d32).double(), critic64(g64, d64), atol=1e-4, rtol=0)


def test_irreps_mismatch_names_both_blocks() -> None:
    first = InteractionBlock("4x0e + 1x1o", "1x0e + 1x1o", "8x0e + 8x1o", 4, 8, 10.0)
    second = InteractionBlock("8x0e + 4x1o", "1x0e + 1x1o", "8x0e + 8x1o", 4, 8, 10.0)
    with pytest.raises(IrrepsMismatchError, match="'interaction 0' outputs 8x0e\\+8x1o.*'interaction 1' expects 8x0e\\+4x1o"):
        check_irreps("interaction 0", first.irreps_out, "interaction 1", second.irreps_in)
    check_irreps("interaction 0", first.irreps_out, "interaction 1", first.irreps_out)  # compatible: no error


@pytest.mark.parametrize("field,value", [("lmax", 0), ("num_layers", 0), ("dtype", "float16"), ("max_step", 0.0)])
def test_bad_network_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(NetworkConfigError, match=f"network.{field}"):
        Actor(dataclasses.replace(NetworkConfig(**SMALL), **{field: value}))


def test_single_atom_without_edges() -> None:
    cfg = NetworkConfig(**SMALL)
    g = batch_graphs([observe(Atoms("Cu", positions=[[0, 0, 0]])), *clusters(sizes=(3,))], cfg)
    d = Actor(cfg)(g)
    q1, q2 = TwinCritic(cfg)(g, d)
    assert d.shape == (4, 3) and q1.shape == q2.shape == (2,) and torch.isfinite(q1).all()
