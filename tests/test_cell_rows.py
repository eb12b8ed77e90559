"""The cell as generalised rows (env.relax_cell): the quasi-Newton head over a cell filter's rows, the critic's cell
features, one TD3 update on such transitions; observations from the real environment on FrechetCellFilter under EMT."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import bulk
from e3nn import o3

from actors.cell_filter import CellRelaxError
from actors.env import ActionError, RelaxEnv
from actors.geometry import random_strain
from common.config import EnvConfig, NetworkConfig, load_config
from common.errors import RelaxRLError
from common.names import CELL_HEAD_NAMES
from common.observation import Observation
from common.transition import Transition
from helpers import cu_cluster, lbfgs_reference
from learner.critic import CELL_FEATURES, Critic, TwinCritic
from learner.graph import batch_graphs, stack_rows, unstack_rows
from learner.heads import HEAD_CLASSES, build_actor
from learner.learner import Learner

SMALL = dict(channels=6, num_layers=2, num_basis=4, radial_hidden=8, tail_hidden=8, dtype="float64",
             path_history=True, actor_head="quasi-newton", step_size=0.02)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def strained_cells() -> list:
    rng = np.random.default_rng(5)
    out = []
    for el, a, rep in (("Cu", 3.61, (1, 1, 1)), ("Ni", 3.52, (2, 1, 1)), ("Al", 4.05, (1, 1, 1))):
        atoms = bulk(el, "fcc", a=a, cubic=True) * rep
        atoms.rattle(0.08, seed=int(rng.integers(100)))
        out.append(random_strain(atoms, 0.04, rng))
    return out


def cell_path(atoms, steps: int, k: int = 4, env: RelaxEnv | None = None) -> list[Observation]:
    """Observations along a real path through the environment on the filter: small steps along the row forces."""
    env = env or RelaxEnv(EnvConfig(relax_cell=True, history_steps=k, max_step=0.2))
    obs = [env.reset(atoms)]
    for _ in range(steps):
        obs.append(env.step(0.01 * obs[-1].row_forces()).obs)
    return obs


def rotate(obs: Observation, rot: np.ndarray) -> Observation:
    """x → R x for the atoms' vectors; the cell rows (matrices of the filter) → R X Rᵀ."""
    def rows(h):  # [n, 6K] of vectors
        return (h.reshape(len(h), -1, 3) @ rot.T).reshape(h.shape)

    def cell_rows(h):  # [3, 6K]: 2K matrices [3, 3], stored column block by column block
        k = h.shape[1] // 3
        m = h.reshape(3, k, 3).transpose(1, 0, 2)  # [2K, 3, 3]
        return (rot @ m @ rot.T).transpose(1, 0, 2).reshape(3, -1)

    return dataclasses.replace(obs, positions=obs.positions @ rot.T, cell=obs.cell @ rot.T, forces=obs.forces @ rot.T,
                               history=rows(obs.history), cell_forces=rot @ obs.cell_forces @ rot.T,
                               cell_history=cell_rows(obs.cell_history), edge_index=None, edge_shift=None)


def test_observations_carry_the_filters_rows_and_histories() -> None:
    obs = cell_path(strained_cells()[0], steps=3, k=2)
    o = obs[-1]
    assert o.cell_forces.shape == (3, 3) and o.cell_history.shape == (3, 12) and o.history.shape == (4, 12)
    assert o.n_rows == 7 and o.row_forces().shape == (7, 3)
    # newest step of the history: the rows' move (0.01 × the row forces of the state before) and the force change
    np.testing.assert_allclose(o.cell_history[:, :3], 0.01 * obs[-2].cell_forces, atol=1e-9)
    np.testing.assert_allclose(o.cell_history[:, 3:6], o.cell_forces - obs[-2].cell_forces, atol=1e-12)
    assert not np.allclose(o.cell, obs[0].cell)  # the real cell moved, the observation shows it


def test_untrained_quasi_newton_head_is_lbfgs_over_the_filter_rows() -> None:
    """The documented start: with all outputs 0 the move is textbook L-BFGS (H0 = γ I, Nocedal's scaling) over the
    n + 3 rows of each structure's FrechetCellFilter, atoms and cell alike."""
    cfg = NetworkConfig(**SMALL)
    actor = build_actor(cfg, EnvConfig(max_step=1.0, history_steps=4, relax_cell=True))
    assert actor.moves_cell and actor.cell_head is not None
    for p in list(actor.head.parameters()) + list(actor.cell_head.parameters()):
        torch.nn.init.zeros_(p)
    cells = strained_cells()
    obs = [cell_path(cells[0], 5)[-1], cell_path(cells[1], 2)[-1], cell_path(cells[2], 0)[-1]]  # full, partial, none
    graph = batch_graphs(obs, cfg)
    moves = unstack_rows(actor(graph).detach().numpy(), [o.n_atoms for o in obs], cell=True)
    for o, got in zip(obs, moves):
        assert got.shape == (o.n_atoms + 3, 3)
        np.testing.assert_allclose(got, lbfgs_reference(o.row_forces(), o.row_history(), 0.02), rtol=1e-7, atol=1e-10)


def test_trained_looking_head_goes_downhill_over_all_rows_and_is_bounded() -> None:
    cfg = NetworkConfig(**SMALL)
    actor = build_actor(cfg, EnvConfig(max_step=0.05, history_steps=4, relax_cell=True))
    for p in list(actor.head.parameters()) + list(actor.cell_head.parameters()):
        torch.nn.init.normal_(p, std=3.0)
    obs = [cell_path(a, 3)[-1] for a in strained_cells()]
    g = batch_graphs(obs, cfg)
    d = actor(g)
    descent = torch.zeros(g.n_graphs, dtype=d.dtype).index_add_(0, g.row_batch(), (d * g.row_forces()).sum(-1))
    assert (descent > 0).all()
    assert float(d.detach().norm(dim=-1).max()) <= 0.05 + 1e-12
    _, cell = g.split_rows(d)
    assert cell.abs().max() > 0


@pytest.mark.parametrize("parity", [1.0, -1.0], ids=["rotation", "rotation+inversion"])
def test_cell_moves_turn_with_the_structure_and_q_does_not(parity: float) -> None:
    cfg = NetworkConfig(**SMALL, radius=4.0)
    env = EnvConfig(max_step=0.2, history_steps=4, relax_cell=True, env_input_dim=1)
    actor, critic = build_actor(cfg, env), TwinCritic(cfg, env)
    for p in list(actor.head.parameters()) + list(actor.cell_head.parameters()):
        torch.nn.init.normal_(p, std=1.0)
    obs = [cell_path(a, 3)[-1] for a in strained_cells()[:2]]
    for o in obs:
        o.env_features = np.array([0.3])
    rot = parity * o3.rand_matrix(dtype=torch.float64).numpy()
    g, g2 = batch_graphs(obs, cfg), batch_graphs([rotate(o, rot) for o in obs], cfg)
    d, d2 = actor(g), actor(g2)
    (a1, c1), (a2, c2) = g.split_rows(d), g2.split_rows(d2)
    r = torch.from_numpy(rot)
    torch.testing.assert_close(a2, a1 @ r.T, atol=1e-9, rtol=0)
    torch.testing.assert_close(c2, r @ c1 @ r.T, atol=1e-9, rtol=0)
    for q, q2 in zip(critic(g, d), critic(g2, d2)):
        torch.testing.assert_close(q2, q, atol=1e-9, rtol=0)


def test_critic_reads_the_cell_action_only_when_the_cell_relaxes() -> None:
    cfg = NetworkConfig(**SMALL)
    plain = Critic(cfg, EnvConfig())
    assert plain.tail_mlp is None and not any("cell" in k for k in plain.state_dict())
    critic = Critic(cfg, EnvConfig(relax_cell=True))
    assert critic.tail_mlp[0].in_features == cfg.channels + CELL_FEATURES
    obs = [cell_path(a, 2)[-1] for a in strained_cells()[:2]]
    g = batch_graphs(obs, cfg)
    action = 0.05 * torch.randn(g.n_rows, 3, dtype=torch.float64)
    q = critic(g, action)
    other = action.clone()
    other[g.n_atoms:] *= -1.0  # the same atom moves, the opposite cell moves
    assert not torch.allclose(critic(g, other), q)
    with pytest.raises(ValueError, match="relax_cell = False got a batch with cell rows"):
        plain(g, action)


def test_heads_without_a_cell_action_refuse_cell_rows_and_the_config_says_so() -> None:
    assert {name for name, cls in HEAD_CLASSES.items() if cls.moves_cell} == set(CELL_HEAD_NAMES)
    g = batch_graphs([cell_path(strained_cells()[0], 1)[-1]], NetworkConfig(**{**SMALL, "actor_head": "free"}))
    actor = build_actor(NetworkConfig(**{**SMALL, "actor_head": "free"}), EnvConfig(history_steps=4))
    with pytest.raises(RelaxRLError, match="no cell action"):
        actor(g)
    with pytest.raises(RelaxRLError, match="relax_cell.*network.actor_head = 'quasi-newton'"):
        load_config(None, ["env.relax_cell=true", "network.actor_head='preconditioned'"])
    with pytest.raises(RelaxRLError, match="expert.teacher = 'bfgs'"):
        load_config(None, ["env.relax_cell=true", "network.actor_head='quasi-newton'", "expert.teacher='newton'"])


def test_a_checkpoint_without_the_cell_readout_moves_the_cell_as_stiff_as_its_atoms() -> None:
    """A head trained without env.relax_cell used on a filter (relaxrl relax --relax-cell): c_cell is the mean atom
    compliance, so with zero outputs it is the same L-BFGS over the rows."""
    cfg = NetworkConfig(**SMALL)
    actor = build_actor(cfg, EnvConfig(max_step=1.0, history_steps=4))
    assert actor.cell_head is None
    for p in actor.head.parameters():
        torch.nn.init.zeros_(p)
    o = cell_path(strained_cells()[1], 4)[-1]
    got = actor(batch_graphs([o], cfg)).detach().numpy()
    np.testing.assert_allclose(got, lbfgs_reference(o.row_forces(), o.row_history(), 0.02), rtol=1e-7, atol=1e-10)


def test_environment_refuses_what_cannot_relax_a_cell() -> None:
    env = RelaxEnv(EnvConfig(relax_cell=True))
    with pytest.raises(CellRelaxError, match="not periodic in all three directions"):
        env.reset(cu_cluster(5, seed=0))
    env.reset(strained_cells()[0])
    with pytest.raises(ActionError, match=r"expected \(7, 3\) \(n_atoms \+ 3 cell rows, 3\)"):
        env.step(np.zeros((4, 3)))


def test_one_td3_update_on_cell_transitions_reaches_the_cell_readout(tmp_path) -> None:
    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "network.actor_head='quasi-newton'",
                             "network.path_history=true", "env.relax_cell=true", "env.history_steps=2",
                             "learner.policy_delay=1", "learner.batch_size=4"])
    learner = Learner(cfg, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="cpu")
    env = RelaxEnv(cfg.env)
    transitions = []
    for atoms in strained_cells()[:2]:
        obs = env.reset(atoms)
        for _ in range(2):
            action = 0.01 * obs.row_forces()
            step = env.step(action)
            transitions.append(Transition(obs, action, step.info["actual_move"], step.reward, step.terminated,
                                          step.truncated, step.obs, step.info["a_back"], expert_action=action))
            obs = step.obs
    info = SimpleNamespace(table=["expert", "online"] * 2, weight=np.ones(4))  # what a replay sample says of its items
    batch = learner._to_batch(info, transitions)
    assert batch.action.shape == (batch.graph.n_rows, 3) == (4 + 4 + 8 + 8 + 12, 3)
    np.testing.assert_allclose(batch.action.numpy(), stack_rows([t.action for t in transitions],
                                                                [t.obs.n_atoms for t in transitions]))
    before = [p.detach().clone() for p in learner.actor.cell_head.parameters()]
    from learner import td3
    logs, td_abs = td3.td3_update(batch, learner.actor, learner.critic, learner.actor_target, learner.critic_target,
                                  learner.actor_opt, learner.critic_opt, learner.hyper, 1.0, True, learner.generator,
                                  correct=learner._correct)
    assert np.isfinite(logs["losses/critic"]) and np.isfinite(logs["losses/actor"]) and td_abs.shape == (4,)
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.actor.cell_head.parameters()))


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_the_cell_path_stays_on_the_networks_device(tmp_path) -> None:
    """No GPU is lent to the tests: torch's meta device stands in for CUDA. Every tensor the cell rows add (row
    index, cell blocks, cell features, the batch's rows) is made on the graph's device, none on the CPU."""
    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "network.actor_head='quasi-newton'",
                             "network.path_history=true", "env.relax_cell=true", "env.history_steps=2",
                             "env.env_input_dim=1"])
    learner = Learner(cfg, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="meta")
    env = RelaxEnv(cfg.env)
    obs = env.reset(strained_cells()[0])
    step = env.step(0.01 * obs.row_forces())
    t = Transition(obs, 0.01 * obs.row_forces(), step.info["actual_move"], step.reward, False, False, step.obs)
    batch = learner._to_batch(SimpleNamespace(table=["online"], weight=np.ones(1)), [t])
    assert batch.graph.cell_forces.device.type == "meta" and batch.row_batch.device.type == "meta"
    d = learner.actor(batch.graph)
    q1, q2 = learner.critic(batch.graph, d)
    assert d.shape == (batch.graph.n_rows, 3) and d.device.type == "meta" and q1.device.type == "meta"


def test_model_hessian_head_over_the_filter_rows_is_lbfgs_untrained_and_turns_with_the_structure() -> None:
    """The 'model-hessian' head on a cell filter: with its edges off and its readouts at their start it is the same
    textbook L-BFGS over the n + 3 rows; with any weights its cell move turns as R X Rᵀ and its atom moves as R x."""
    cfg = NetworkConfig(**{**SMALL, "actor_head": "model-hessian"}, radius=4.0)
    actor = build_actor(cfg, EnvConfig(max_step=1.0, history_steps=4, relax_cell=True))
    actor.max_step = 1e3  # the unbounded maths (the config allows at most 1 Å)
    assert actor.moves_cell and actor.cell_head is not None
    torch.nn.init.constant_(actor.edge_mlp[-1].bias, -60.0)  # no coupling: P = d·I, d = 1/step_size
    cells = strained_cells()
    obs = [cell_path(cells[0], 5)[-1], cell_path(cells[1], 2)[-1], cell_path(cells[2], 0)[-1]]
    moves = unstack_rows(actor(batch_graphs(obs, cfg)).detach().numpy(), [o.n_atoms for o in obs], cell=True)
    for o, got in zip(obs, moves):
        np.testing.assert_allclose(got, lbfgs_reference(o.row_forces(), o.row_history(), 0.02), rtol=1e-6, atol=1e-9)
    for p in list(actor.head.parameters()) + list(actor.cell_head.parameters()) + list(actor.edge_mlp[-1].parameters()):
        torch.nn.init.normal_(p, std=0.5)
    actor.max_step = 0.2
    rot = o3.rand_matrix(dtype=torch.float64).numpy()
    g, g2 = batch_graphs(obs[:2], cfg), batch_graphs([rotate(o, rot) for o in obs[:2]], cfg)
    (a1, c1), (a2, c2) = g.split_rows(actor(g)), g2.split_rows(actor(g2))
    r = torch.from_numpy(rot)
    torch.testing.assert_close(a2, a1 @ r.T, atol=1e-7, rtol=0)
    torch.testing.assert_close(c2, r @ c1 @ r.T, atol=1e-7, rtol=0)
    assert float(c1.abs().max()) > 0
