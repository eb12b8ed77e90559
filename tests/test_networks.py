"""E(3) equivariance and structure of the e3nn networks (learner/blocks.py, heads.py, critic.py), float64."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from e3nn import o3
from e3nn.util.test import assert_equivariant

from common.config import ConfigError, EnvConfig, NetworkConfig
from common.names import ACTOR_HEAD_NAMES
from common.observation import Observation
from helpers import cu_cluster as _cu_cluster
from helpers import lbfgs_reference, observe, preconditioned_lbfgs_reference
from learner.blocks import InteractionBlock, IrrepsMismatchError, check_irreps, scatter_mean
from learner.critic import Critic, TwinCritic
from learner.graph import Graph, batch_graphs
from learner.heads import HEAD_CLASSES, Actor, build_actor

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
    cfg, env = NetworkConfig(**{**SMALL, "lmax": lmax}), EnvConfig(env_input_dim=env_dim)
    g = batch_graphs(clusters(env_dim), cfg)
    actor = Actor(cfg, env)
    # rotation, inversion and translation: positions are points, forces and displacements 1o
    assert_equivariant(
        lambda pos, f: actor(with_tensors(g, pos, f)),
        args_in=[g.pos, g.forces],
        irreps_in=["cartesian_points", o3.Irreps("1o")],
        irreps_out=[o3.Irreps("1o")],
    )


@pytest.mark.parametrize("env_dim", [0, 2])
def test_critic_is_invariant_e3nn_helper(env_dim: int) -> None:
    cfg, env = NetworkConfig(**SMALL), EnvConfig(env_input_dim=env_dim)
    g = batch_graphs(clusters(env_dim), cfg)
    critic = Critic(cfg, env)
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
    cfg, env = NetworkConfig(radius=4.0, **SMALL), EnvConfig(env_input_dim=1)
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    crystal.rattle(0.1, seed=4)
    obs = observe(crystal, np.array([0.3]))
    rot = parity * o3.rand_matrix(dtype=torch.float64).numpy()
    obs2 = rotated(obs, rot, np.array([0.7, -1.2, 3.0]))
    actor, critic = Actor(cfg, env), TwinCritic(cfg, env)
    g, g2 = batch_graphs([obs], cfg), batch_graphs([obs2], cfg)
    d, d2 = actor(g), actor(g2)
    torch.testing.assert_close(d2, d @ torch.from_numpy(rot).T, atol=1e-10, rtol=0)
    for q, q2 in zip(critic(g, d), critic(g2, d2)):
        torch.testing.assert_close(q2, q, atol=1e-10, rtol=0)


def test_permutation_equivariance() -> None:
    cfg, env = NetworkConfig(**SMALL), EnvConfig()
    obs = clusters(sizes=(8,))[0]
    perm = np.random.default_rng(0).permutation(8)
    obs_p = dataclasses.replace(
        obs, positions=obs.positions[perm], numbers=obs.numbers[perm], forces=obs.forces[perm]
    )
    actor, critic = Actor(cfg, env), Critic(cfg, env)
    g, gp = batch_graphs([obs], cfg), batch_graphs([obs_p], cfg)
    d, dp = actor(g), actor(gp)
    torch.testing.assert_close(dp, d[perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(critic(gp, dp), critic(g, d), atol=1e-12, rtol=0)


def test_supercell_gives_the_same_per_atom_outputs() -> None:
    """A rattled periodic cell and its 2x2x2 repeat: same displacements per atom, same Q (mean pool)."""
    cfg, env = NetworkConfig(radius=4.5, max_neighbors=0, **SMALL), EnvConfig()  # no cap: ties would cut differently
    prim = bulk("Cu", "fcc", a=3.61, cubic=True)
    prim.numbers[1] = 28
    prim.rattle(0.1, seed=7)
    sup = prim.repeat((2, 2, 2))  # atom order: 8 copies of the primitive atoms
    o_prim, o_sup = observe(prim), observe(sup)
    np.testing.assert_allclose(o_sup.forces, np.tile(o_prim.forces, (8, 1)), atol=1e-10)
    actor, critic = Actor(cfg, env), Critic(cfg, env)
    g_prim, g_sup = batch_graphs([o_prim], cfg), batch_graphs([o_sup], cfg)
    d_prim, d_sup = actor(g_prim), actor(g_sup)
    torch.testing.assert_close(d_sup, d_prim.repeat(8, 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(critic(g_sup, d_sup), critic(g_prim, d_prim), atol=1e-10, rtol=0)


def test_no_env_features_means_no_gate_and_no_tail() -> None:
    cfg, env = NetworkConfig(**SMALL), EnvConfig(env_input_dim=0)
    g = batch_graphs(clusters(), cfg)
    actor, critic = Actor(cfg, env), Critic(cfg, env)
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
    cfg, env = NetworkConfig(**SMALL), EnvConfig(env_input_dim=3)
    g = batch_graphs(clusters(3), cfg)
    actor, critic = Actor(cfg, env), Critic(cfg, env)
    d, scale = actor(g, return_scale=True)
    assert scale.shape == (2,) and bool(((scale > 0) & (scale < 1)).all())
    torch.testing.assert_close(d, actor.ungated(g) * scale[g.batch, None])
    q = critic(g, d)
    g_other = dataclasses.replace(g, env_features=g.env_features + 1.0)
    assert critic.tail_mlp is not None and not torch.allclose(critic(g_other, d), q)


def test_displacements_are_bounded_by_max_step() -> None:
    cfg = NetworkConfig(**SMALL)
    g = batch_graphs(clusters(), cfg)
    g = dataclasses.replace(g, forces=g.forces * 1e4)  # absurd forces
    d = Actor(cfg, EnvConfig(max_step=0.15))(g)
    assert torch.isfinite(d).all() and float(d.detach().norm(dim=1).max()) < 0.15


@pytest.mark.parametrize("env_dim", [0, 2])
def test_gradients_reach_every_parameter(env_dim: int) -> None:
    cfg, env = NetworkConfig(**SMALL), EnvConfig(env_input_dim=env_dim)
    g = batch_graphs(clusters(env_dim), cfg)
    actor, critic = Actor(cfg, env), TwinCritic(cfg, env)
    q1, q2 = critic(g, actor(g))
    (q1.sum() + q2.sum()).backward()
    for name, p in list(actor.named_parameters()) + list(critic.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, f"{name} gets no gradient"


def test_float32_matches_float64() -> None:
    cfg64, env = NetworkConfig(**SMALL), EnvConfig(env_input_dim=2)
    cfg32 = dataclasses.replace(cfg64, dtype="float32")
    obs = clusters(2)
    g64, g32 = batch_graphs(obs, cfg64), batch_graphs(obs, cfg32)
    assert g32.pos.dtype == torch.float32
    actor64, critic64 = Actor(cfg64, env), Critic(cfg64, env)
    actor32, critic32 = Actor(cfg32, env), Critic(cfg32, env)
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


@pytest.mark.parametrize("section,field,value", [("network", "lmax", 0), ("network", "num_layers", 0),
                                                 ("network", "num_layers", 7), ("network", "dtype", "float16"),
                                                 ("env", "max_step", 0.0)])
def test_bad_network_config_names_the_field(section: str, field: str, value: object) -> None:
    """A config the networks cannot be built with does not exist: its dataclass refuses it, naming the key."""
    base = NetworkConfig(**SMALL) if section == "network" else EnvConfig()
    with pytest.raises(ConfigError, match=f"{section}.{field} must be"):
        dataclasses.replace(base, **{field: value})


def test_single_atom_without_edges() -> None:
    cfg, env = NetworkConfig(**SMALL), EnvConfig()
    g = batch_graphs([observe(Atoms("Cu", positions=[[0, 0, 0]])), *clusters(sizes=(3,))], cfg)
    d = Actor(cfg, env)(g)
    q1, q2 = TwinCritic(cfg, env)(g, d)
    assert d.shape == (4, 3) and q1.shape == q2.shape == (2,) and torch.isfinite(q1).all()


# ---- path history and the preconditioned head (issue 12) ---------------------------------------


def _with_history(obs: list[Observation], seed: int = 0, steps: int = 1) -> list[Observation]:
    rng = np.random.default_rng(seed)
    for o in obs:
        o.history = rng.normal(scale=0.05, size=(o.n_atoms, 6 * steps))
    return obs


def _rotated(o: Observation, R: np.ndarray) -> Observation:
    blocks = [o.history[:, 3 * k:3 * k + 3] @ R.T for k in range(o.history.shape[1] // 3)]
    return dataclasses.replace(o, positions=o.positions @ R.T, forces=o.forces @ R.T,
                               history=np.concatenate(blocks, axis=1), edge_index=None, edge_shift=None)


@pytest.mark.parametrize("head", ACTOR_HEAD_NAMES)
def test_history_inputs_keep_actor_equivariant_and_critic_invariant(head: str) -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head=head)
    env = EnvConfig(history_steps=3)
    actor, critic = build_actor(cfg, env), TwinCritic(cfg, env)
    for p in actor.head.parameters():  # a head far from its start, so every term of it matters
        torch.nn.init.normal_(p, std=1.0)
    obs = _with_history(clusters(0, sizes=(6,)), steps=3)
    R = o3.rand_matrix(dtype=torch.float64).numpy()
    g0, g1 = batch_graphs(obs, cfg), batch_graphs([_rotated(o, R) for o in obs], cfg)
    d0, d1 = actor(g0), actor(g1)
    assert torch.allclose(d0 @ torch.from_numpy(R).T, d1, atol=1e-10)
    q0, q1 = critic(g0, d0), critic(g1, d1)
    assert torch.allclose(q0[0], q1[0], atol=1e-9)
    # the history changes what the actor does (it is an input, not ignored)
    plain = [dataclasses.replace(o, history=np.zeros_like(o.history)) for o in obs]
    assert not torch.allclose(actor(batch_graphs(plain, cfg)), d0)


def test_preconditioned_head_starts_as_heavy_ball_and_vanishes_with_the_forces() -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="preconditioned", step_size=0.1, momentum=0.5)
    actor = build_actor(cfg, EnvConfig(max_step=0.2))
    obs = clusters(0, sizes=(7,))
    obs[0].history = np.zeros((7, 6))
    obs[0].forces = obs[0].forces * (0.3 / np.abs(obs[0].forces).max())  # small forces: no squashing
    d = actor(batch_graphs(obs, cfg)).detach().numpy()
    f = obs[0].forces
    alpha = float((d * f).sum() / (f * f).sum())
    assert 0.06 < alpha < 0.14  # ≈ step_size at initialisation
    assert np.linalg.norm(d, axis=1).max() < 0.2
    obs[0].forces = np.zeros_like(f)  # no force and no previous move: no step (a fixed atom stays)
    assert np.abs(actor(batch_graphs(obs, cfg)).detach().numpy()).max() < 1e-6


def test_every_actor_head_name_builds_its_class_and_no_other_is_accepted() -> None:
    """common.names.ACTOR_HEAD_NAMES (what the config accepts) and learner.heads.HEAD_CLASSES hold the same names."""
    assert sorted(HEAD_CLASSES) == sorted(ACTOR_HEAD_NAMES)
    for name in ACTOR_HEAD_NAMES:
        actor = build_actor(NetworkConfig(**SMALL, actor_head=name), EnvConfig())
        assert type(actor) is HEAD_CLASSES[name] and isinstance(actor, Actor)


def test_actor_head_and_momentum_ranges_are_checked() -> None:
    with pytest.raises(ConfigError, match="actor_head"):
        NetworkConfig(actor_head="newton")
    with pytest.raises(ConfigError, match="momentum"):
        NetworkConfig(momentum=0.99)


def test_descriptor_species_give_unseen_elements_features_between_seen_ones() -> None:
    from learner.blocks import SpeciesEmbedding, element_descriptors

    table = element_descriptors(100)
    assert table[29].tolist()[:3] == pytest.approx([1.32, 4 / 7, 11 / 18])  # Cu: period 4, group 11
    assert table[79, 2] == table[29, 2] and table[57, 2] == pytest.approx(3 / 18)  # Au in Cu's group; La in group 3
    emb = SpeciesEmbedding(NetworkConfig(**SMALL, species="descriptors"))
    out = emb(torch.tensor([29, 47, 79]))  # Cu, Ag, Au: one group, neighbouring periods
    assert out.shape == (3, 6)
    assert torch.norm(out[1] - out[0]) < torch.norm(emb(torch.tensor([1]))[0] - out[0])  # Ag nearer Cu than H is
    cfg = NetworkConfig(**SMALL, species="descriptors", actor_head="preconditioned", path_history=True)
    d = build_actor(cfg, EnvConfig())(batch_graphs(_with_history(clusters(0, sizes=(5,))), cfg))
    assert torch.isfinite(d).all()


def test_preconditioned_moves_always_point_downhill() -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="preconditioned", momentum=0.9)
    actor = build_actor(cfg, EnvConfig())
    obs = _with_history(clusters(0, sizes=(6, 9)), seed=3)
    for o in obs:  # previous moves against the force: an overshoot the momentum must not continue
        o.history[:, :3] = -0.1 * o.forces / np.linalg.norm(o.forces, axis=1, keepdims=True)
    for p in actor.head.parameters():  # a large, arbitrary correction head
        torch.nn.init.normal_(p, std=5.0)
    g = batch_graphs(obs, cfg)
    d = actor(g)
    assert ((d * g.forces).sum(-1) > 0).all()


# ---- the quasi-Newton head --------------------------------------------------------------------


def _secant_history(atoms_list, steps: int) -> list[Observation]:
    """Observations whose history is a real path: small steepest-descent moves under EMT."""
    from ase.calculators.emt import EMT

    out = []
    for atoms in atoms_list:
        a = atoms.copy()
        a.calc = EMT()
        hist = np.zeros((len(a), 6 * steps))
        f = a.get_forces()
        for _ in range(steps):
            move = 0.01 * f
            a.positions = a.positions + move
            f_new = a.get_forces()
            hist = np.concatenate([np.concatenate([move, f_new - f], axis=1), hist[:, :-6]], axis=1)
            f = f_new
        o = observe(a)
        o.history = hist
        out.append(o)
    return out


def test_quasi_newton_head_starts_as_lbfgs_and_goes_downhill() -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="quasi-newton", step_size=0.02)
    actor = build_actor(cfg, EnvConfig(max_step=1.0, history_steps=4))
    for p in actor.head.parameters():  # zero head: compliance exactly the identity, so H0 = γ I
        torch.nn.init.zeros_(p)
    obs = _secant_history([cu_cluster(6, seed=0), cu_cluster(9, seed=1)], steps=4)
    obs.append(_secant_history([cu_cluster(5, seed=2)], steps=1)[0])
    obs[-1].history = np.concatenate([obs[-1].history, np.zeros((5, 18))], axis=1)  # one step taken so far
    d = actor(batch_graphs(obs, cfg)).detach().numpy()
    parts = np.split(d, np.cumsum([o.n_atoms for o in obs])[:-1])
    for o, got in zip(obs, parts):
        np.testing.assert_allclose(got, lbfgs_reference(o.forces, o.history, 0.02), rtol=1e-7, atol=1e-10)
    # a trained-looking head: still a descent direction, bounded as a whole by max_step
    bounded = build_actor(cfg, EnvConfig(max_step=0.1, history_steps=4))
    for p in bounded.head.parameters():
        torch.nn.init.normal_(p, std=3.0)
    g = batch_graphs(obs, cfg)
    d = bounded(g)
    assert (torch.zeros(3, dtype=d.dtype).index_add_(0, g.batch, (d * g.forces).sum(-1)) > 0).all()
    assert float(d.detach().norm(dim=-1).max()) <= 0.1 + 1e-12


def test_quasi_newton_head_gives_no_move_to_atoms_without_force_and_history() -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="quasi-newton")
    actor = build_actor(cfg, EnvConfig(history_steps=3))
    for p in actor.head.parameters():
        torch.nn.init.normal_(p, std=1.0)
    obs = _secant_history([cu_cluster(7, seed=4)], steps=3)
    fixed = [0, 3]  # as under FixAtoms: zero force, never moved, so no force change either
    obs[0].forces[fixed] = 0.0
    obs[0].history[fixed] = 0.0
    d = actor(batch_graphs(obs, cfg)).detach().numpy()
    assert np.abs(d[fixed]).max() == 0.0 and np.abs(d).max() > 0


@pytest.mark.parametrize("edge_vectors", [0, 2])
def test_model_hessian_head_is_lbfgs_on_its_own_model_hessian_and_starts_as_lbfgs(edge_vectors: int) -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="model-hessian", step_size=0.02, edge_vectors=edge_vectors)
    actor = build_actor(cfg, EnvConfig(max_step=1.0, history_steps=4))
    actor.max_step = 1e3  # the unbounded maths (the config allows at most 1 Å)
    obs = _secant_history([cu_cluster(6, seed=0), cu_cluster(9, seed=1)], steps=4)
    obs.append(_secant_history([cu_cluster(5, seed=2)], steps=1)[0])
    obs[-1].history = np.concatenate([obs[-1].history, np.zeros((5, 18))], axis=1)  # one step taken so far
    g = batch_graphs(obs, cfg)
    # untrained: edge blocks near zero, d = 1/step_size, so the move is L-BFGS with Nocedal's scaling (to ~1 %)
    d = actor(g).detach().numpy()
    parts = np.split(d, np.cumsum([o.n_atoms for o in obs])[:-1])
    for o, got in zip(obs, parts):
        want = lbfgs_reference(o.forces, o.history, 0.02)
        assert np.linalg.norm(got - want) < 0.02 * np.linalg.norm(want)
    # whatever the weights: the textbook preconditioned L-BFGS step on the model Hessian the head predicts
    for p in actor.model_hessian_readout():
        torch.nn.init.normal_(p, std=1.0)
    model = actor.model_hessian(g)
    assert (model.vectors is None) == (edge_vectors == 0)
    d = actor(g).detach().numpy()
    eye = torch.eye(3 * g.n_atoms, dtype=torch.float64)
    p_dense = torch.stack([model.matvec(eye[:, k].reshape(-1, 3)).reshape(-1) for k in range(3 * g.n_atoms)], 1)
    offset = 0
    for o in obs:
        sl = slice(3 * offset, 3 * (offset + o.n_atoms))
        want = preconditioned_lbfgs_reference(o.forces, o.history, np.linalg.inv(p_dense[sl, sl].detach().numpy()))
        np.testing.assert_allclose(d[offset:offset + o.n_atoms], want, rtol=1e-4, atol=1e-6)
        offset += o.n_atoms


@pytest.mark.parametrize("edge_vectors", [0, 2])
def test_model_hessian_head_goes_downhill_and_never_moves_a_held_coordinate(edge_vectors: int) -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="model-hessian", edge_vectors=edge_vectors)
    actor = build_actor(cfg, EnvConfig(max_step=0.1, history_steps=3))
    for p in actor.model_hessian_readout():
        torch.nn.init.normal_(p, std=0.5)
    obs = _secant_history([cu_cluster(7, seed=4), cu_cluster(8, seed=5)], steps=3)
    free = np.ones((7, 3))
    free[[0, 3]] = 0.0  # as under FixAtoms: no force, never moved
    free[5, 2] = 0.0  # selective dynamics: one direction held
    obs[0].free = free
    obs[0].forces *= free
    obs[0].history *= np.tile(free, 6)
    g = batch_graphs(obs, cfg)
    d = actor(g)
    assert float(d[:7][torch.as_tensor(free) == 0].abs().max()) == 0.0 and float(d.abs().max()) > 0
    assert (torch.zeros(2, dtype=d.dtype).index_add_(0, g.batch, (d * g.forces).sum(-1)) > 0).all()
    assert float(d.detach().norm(dim=-1).max()) <= 0.1 + 1e-12


def test_model_hessian_edge_vectors_rotate_with_the_structure_and_learn() -> None:
    cfg = NetworkConfig(**SMALL, path_history=True, actor_head="model-hessian", edge_vectors=2)
    actor = build_actor(cfg, EnvConfig(max_step=0.1, history_steps=3))
    obs = _secant_history([cu_cluster(7, seed=6)], steps=3)
    g0 = batch_graphs(obs, cfg)
    # at the start the rank-one terms are about 1e-3 of the pair form's blocks: the untrained head is the pair form's
    start = actor.model_hessian(g0)
    pair = torch.einsum("eki,ekj->eij", start.vectors, start.vectors)
    assert 0 < float(pair.norm()) < 1e-2 * float((start.half_edge_blocks() * 2 - pair).norm())
    # they learn: the move's gradient reaches their weights
    actor(g0).pow(2).sum().backward()
    assert actor.vector_weight.grad is not None and float(actor.vector_weight.grad.abs().sum()) > 0
    with torch.no_grad():
        torch.nn.init.normal_(actor.vector_weight, std=1.0)
    R = o3.rand_matrix(dtype=torch.float64)
    g1 = batch_graphs([_rotated(o, R.numpy()) for o in obs], cfg)
    m0, m1 = actor.model_hessian(g0), actor.model_hessian(g1)
    b0, b1 = m0.half_edge_blocks(), m1.half_edge_blocks()
    assert torch.equal(g0.edge_index, g1.edge_index)
    torch.testing.assert_close(R @ b0 @ R.T, b1, atol=1e-9, rtol=0)  # each edge's 3×3 block rotates as a tensor
    vv = torch.einsum("eki,ekj->eij", m0.vectors, m0.vectors)
    assert float(vv.norm()) > 0.1 * float(b0.norm())  # and is no longer of the pair form αI + βr̂r̂ᵀ alone
    d0, d1 = actor(g0), actor(g1)
    torch.testing.assert_close(d0 @ R.T, d1, atol=1e-9, rtol=0)
    with torch.no_grad():
        actor.vector_weight.zero_()
    assert not torch.allclose(actor(g0), d0)
