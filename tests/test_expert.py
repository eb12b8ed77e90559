"""The teachers: the BFGS expert reproduces ase.optimize.BFGS step for step (also on the cell filter); the Newton,
exact-compliance and line-search teachers; the registry and the force calls the expert actors report; the nfake
schedule."""
from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.optimize import BFGS, BFGSLineSearch

from actors.env import RelaxEnv
from actors.expert import (
    BFGSExpert,
    ExactComplianceTeacher,
    ExpertError,
    LineSearchTeacher,
    NewtonTeacher,
    exact_compliance,
    fake_step_probability,
    finite_difference_hessian,
    free_coordinates,
    make_teacher,
)
from actors.generate import random_cluster, rattled_bulk, rattled_slab
from actors.rollout import run_episode
from common.config import ConfigError, EnvConfig, ExpertConfig


class CountingEMT(EMT):
    """EMT that counts its energy/force evaluations (a real calculator, not a mock)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        super().calculate(*args, **kwargs)


def _structures():
    rng = np.random.default_rng(3)
    return {
        "cluster-Cu5": random_cluster(["Cu"] * 5, rng),
        "cluster-AuPt7": random_cluster(["Au", "Pt", "Au", "Pt", "Au", "Pt", "Au"], rng),
        "cluster-Al12": random_cluster(["Al"] * 12, rng),
        "bulk-Cu32": rattled_bulk("Cu", 32, rng, rattle=0.15),
        "bulk-Ni8": rattled_bulk("Ni", 8, rng, rattle=0.1),
        "slab-Pd12": rattled_slab("Pd", (2, 2, 3), rng, rattle=0.1),
    }


STRUCTURES = _structures()


@pytest.mark.parametrize("name", list(STRUCTURES))
@pytest.mark.parametrize("maxstep", [0.2, 0.1])
def test_expert_reproduces_ase_bfgs_step_for_step(name, maxstep):
    atoms = STRUCTURES[name]
    fmax, max_steps = 0.05, 150

    ref = atoms.copy()
    ref.calc = CountingEMT()
    opt = BFGS(ref, logfile=None, maxstep=maxstep)
    ref_positions = []
    for _ in opt.irun(fmax=fmax, steps=max_steps):
        ref_positions.append(ref.get_positions())

    env = RelaxEnv(EnvConfig(fmax=fmax, max_steps=max_steps, max_step=0.2))  # max_step ≥ maxstep
    expert = BFGSExpert(maxstep=maxstep)
    obs = env.reset(atoms)
    positions = [obs.positions]
    while True:
        step = env.step(expert.action(obs))
        obs = step.obs
        positions.append(obs.positions)
        assert step.info["a_back"] == 0.0  # the correction never touched a BFGS step
        if step.terminated or step.truncated:
            break

    assert env.steps == opt.nsteps
    assert env.force_calls == ref.calc.calls == opt.nsteps + 1
    assert len(positions) == len(ref_positions)
    for k, (mine, theirs) in enumerate(zip(positions, ref_positions)):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-8, err_msg=f"{name}: step {k}")
    assert step.terminated == (np.linalg.norm(ref.get_forces(), axis=1).max() < fmax)


def test_expert_takes_one_bounded_step_not_a_jump():
    atoms = STRUCTURES["cluster-Al12"]
    env, expert = RelaxEnv(EnvConfig(max_step=1.0)), BFGSExpert(maxstep=0.05)
    obs = env.reset(atoms)
    for _ in range(5):
        action = expert.action(obs)
        assert np.linalg.norm(action, axis=1).max() <= 0.05 + 1e-12
        obs = env.step(action).obs


def test_expert_reset_forgets_the_hessian():
    atoms = STRUCTURES["cluster-Cu5"]
    env, expert = RelaxEnv(), BFGSExpert()
    obs = env.reset(atoms)
    first = expert.action(obs)
    for _ in range(3):
        obs = env.step(expert.action(obs)).obs
    assert not np.allclose(expert.hessian, 70.0 * np.eye(15))
    expert.reset()
    np.testing.assert_array_equal(expert.action(env.reset(atoms)), first)


def test_expert_episode_summary():
    summary = run_episode(RelaxEnv(EnvConfig(fmax=0.05)), BFGSExpert().action, STRUCTURES["cluster-Cu5"])
    assert summary["converged"] and not summary["truncated"] and summary["error"] is None
    assert summary["force_calls"] == summary["steps"] + 1
    assert summary["fmax_final"] < 0.05 < summary["fmax_initial"]
    assert summary["energy_change"] < 0


def test_invalid_maxstep_is_rejected():
    with pytest.raises(ExpertError):
        BFGSExpert(maxstep=0.0)


# ----------------------------------------------------------------------------- nfake


def test_linear_schedule():
    cfg = ExpertConfig(p_start=1.0, p_end=0.1, decay_steps=1000, schedule="linear")
    assert fake_step_probability(0, cfg) == pytest.approx(1.0)
    assert fake_step_probability(500, cfg) == pytest.approx(0.55)
    assert fake_step_probability(1000, cfg) == pytest.approx(0.1)
    assert fake_step_probability(10**6, cfg) == pytest.approx(0.1)


def test_exponential_schedule_decays_early_and_hits_the_endpoints():
    cfg = ExpertConfig(p_start=0.8, p_end=0.0, decay_steps=1000, schedule="exponential")
    values = [fake_step_probability(t, cfg) for t in range(0, 1001, 50)]
    assert values[0] == pytest.approx(0.8) and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(values, values[1:]))
    lin = ExpertConfig(p_start=0.8, p_end=0.0, decay_steps=1000, schedule="linear")
    assert fake_step_probability(300, cfg) < fake_step_probability(300, lin)
    assert fake_step_probability(5000, cfg) == pytest.approx(0.0, abs=1e-12)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ConfigError, match="expert.schedule must be 'linear' or 'exponential'"):
        ExpertConfig(schedule="cosine")


# ---- the Newton teacher -------------------------------------------------------------------------


def _episode(env, teacher, atoms):
    teacher.reset()
    return run_episode(env, teacher.action, atoms)


@pytest.mark.parametrize("name", ["cluster-Cu5", "cluster-AuPt7", "bulk-Ni8", "slab-Pd12"])
def test_newton_teacher_relaxes_in_fewer_steps_than_bfgs_and_its_hessians_are_not_counted(name):
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=100))
    newton = _episode(env, NewtonTeacher(env, maxstep=0.2), STRUCTURES[name])
    assert newton["converged"]
    assert newton["force_calls"] == newton["steps"] + 1  # one per step + the start: the teacher's calls are its own
    bfgs = _episode(RelaxEnv(EnvConfig(fmax=0.05, max_steps=100)), BFGSExpert(maxstep=0.2), STRUCTURES[name])
    assert newton["steps"] < bfgs["steps"]


def test_newton_teacher_keeps_fixed_atoms_and_offers_no_step_on_large_structures():
    from ase.constraints import FixAtoms, FixCartesian

    slab = STRUCTURES["slab-Pd12"].copy()
    slab.set_constraint([FixAtoms(indices=[0, 1, 2, 3]), FixCartesian(4, mask=(False, False, True))])
    assert free_coordinates(slab).reshape(-1, 3)[:5].tolist() == [[False] * 3] * 4 + [[True, True, False]]
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=60))
    teacher = NewtonTeacher(env, maxstep=0.2)
    obs = env.reset(slab)
    d = teacher.action(obs)
    assert np.abs(d[:4]).max() == 0.0 and d[4, 2] == 0.0 and np.abs(d[5:]).max() > 0
    assert teacher.force_calls == 2 * (3 * 7 + 2)  # central differences over the 23 free coordinates
    small = make_teacher(ExpertConfig(teacher="newton", teacher_max_atoms=4), env, 0.2)
    assert teacher.offers(obs) and not small.offers(obs)  # 12 atoms > 4
    with pytest.raises(ExpertError, match="offers"):
        small.action(obs)
    assert small.force_calls == 0
    assert isinstance(make_teacher(ExpertConfig(), env, 0.2), BFGSExpert)
    with pytest.raises(ConfigError, match="expert.teacher"):
        ExpertConfig(teacher="lbfgs")


def test_exact_compliance_teacher_moves_as_the_quasi_newton_head_would_with_the_exact_compliance():
    """Its steps are ones the 'quasi-newton' head can make: with C_i = |H_ii|⁻¹ in place of the network's
    compliance, the head's move is the teacher's, and both keep fixed atoms still."""
    import torch
    from ase.constraints import FixAtoms

    from common.config import NetworkConfig
    from learner.graph import batch_graphs
    from learner.heads import QuasiNewtonActor

    env_cfg = EnvConfig(fmax=0.01, max_steps=50, history_steps=3)
    net = NetworkConfig(actor_head="quasi-newton", path_history=True, dtype="float64", channels=4, num_layers=2)
    slab = STRUCTURES["slab-Pd12"].copy()
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    env = RelaxEnv(env_cfg)
    teacher = ExactComplianceTeacher(env, maxstep=0.2, min_curvature=10.0)
    obs = env.reset(slab)
    for _ in range(2):  # a path with two remembered steps
        obs = env.step(0.01 * obs.forces).obs
    move = teacher.action(obs)
    exact = torch.as_tensor(exact_compliance(
        finite_difference_hessian(env.atoms, EMT(), free_coordinates(env.atoms)), free_coordinates(env.atoms), 10.0))

    class Exact(QuasiNewtonActor):
        def compliance(self, graph):
            return exact

    head = Exact(net, EnvConfig(max_step=0.2, history_steps=3)).ungated(batch_graphs([obs], net)).detach().numpy()
    np.testing.assert_allclose(move, head, atol=1e-10)
    assert np.abs(move[:4]).max() == 0.0 and np.abs(move).max() > 0


def test_expert_actor_acts_with_its_policy_where_the_teacher_offers_no_step():
    """Above expert.teacher_max_atoms the expert actor's transition is a policy step (into the policy tables)."""
    from actors.loop import TeacherOrPolicy

    class Moves:
        def noisy_moves(self, observations, t_total):
            return [np.full((o.n_atoms, 3), 0.01) for o in observations], 1.0

    envs = [RelaxEnv(EnvConfig()), RelaxEnv(EnvConfig())]
    obs = [envs[0].reset(STRUCTURES["cluster-Cu5"]), envs[1].reset(STRUCTURES["slab-Pd12"])]
    teachers = [NewtonTeacher(env, 0.2, max_atoms=8) for env in envs]
    acts = TeacherOrPolicy(Moves(), teachers, ExpertConfig(p_start=1.0, p_end=1.0), np.random.default_rng(0)).act(obs, 0)
    assert acts.sources == ["teacher", "policy"]
    assert acts.expert_moves[1] is None and np.allclose(acts.moves[1], 0.01)


# ---- the line-search BFGS teacher ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_line_search_teacher_takes_ase_bfgslinesearch_steps_bounded_by_max_step(name):
    """Step for step, the teacher's move through RelaxEnv is the one ase.optimize.BFGSLineSearch takes from the
    same point, until ASE moves an atom further than max_step: there the teacher's is the same move scaled to it."""
    atoms = STRUCTURES[name]
    ref = atoms.copy()
    ref.calc = EMT()
    opt = BFGSLineSearch(ref, logfile=None, maxstep=0.2)
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=150, max_step=0.2))
    teacher = make_teacher(ExpertConfig(teacher="bfgsls"), env, 0.2)
    obs = env.reset(atoms)
    assert isinstance(teacher, LineSearchTeacher) and teacher.offers(obs)
    terminated = False
    while not terminated:
        start = ref.get_positions()
        opt.step()
        theirs = ref.get_positions() - start
        mine = teacher.action(obs)
        longest = np.linalg.norm(theirs, axis=1).max()
        if longest > 0.2:  # bounded like every fake step; ASE's own maxstep does not bound each atom
            np.testing.assert_allclose(mine, theirs * (0.2 / longest), rtol=0, atol=1e-10)
            break
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-10)
        step = env.step(mine)
        obs, terminated = step.obs, step.terminated
        assert not step.truncated
    assert env.force_calls == env.steps + 1  # the line search's trial points are the teacher's own calls
    assert teacher.force_calls > env.steps


def test_line_search_teacher_relaxes_keeps_fixed_atoms_and_follows_moves_made_between_its_steps():
    from ase.constraints import FixAtoms

    slab = STRUCTURES["slab-Pd12"].copy()
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=100))
    teacher = LineSearchTeacher(env, maxstep=0.2)
    summary = _episode(env, teacher, slab)
    assert summary["converged"] and summary["force_calls"] == summary["steps"] + 1
    assert np.abs(env.atoms.get_positions()[:4] - slab.get_positions()[:4]).max() == 0.0
    # a policy step between two fake steps: the teacher starts its next step from where the structure is now
    cluster = STRUCTURES["cluster-AuPt7"]
    teacher.reset()
    obs = env.reset(cluster)
    obs = env.step(teacher.action(obs)).obs
    obs = env.step(0.02 * obs.forces).obs  # not the teacher's move
    here = env.atoms.get_positions()
    move = teacher.action(obs)
    accepted = teacher._atoms.get_positions() - here  # the line search's step from the current point
    np.testing.assert_allclose(move, accepted * min(1.0, 0.2 / np.linalg.norm(accepted, axis=1).max()), atol=1e-12)
    after = env.step(move).obs
    assert after.energy < obs.energy  # a line-search step goes downhill from the current point


# ---- the teacher contract ------------------------------------------------------------------------


def test_every_teacher_name_has_one_registered_teacher_that_keeps_the_contract():
    """common.names.TEACHER_NAMES (what the config accepts) and the registry hold the same names; each name builds
    a Teacher (reset, offers, action, force_calls) of its class, and a name outside the list cannot register."""
    from actors.expert import TEACHERS, Teacher, register_teacher
    from common.names import TEACHER_NAMES

    assert sorted(TEACHERS) == sorted(TEACHER_NAMES)
    env = RelaxEnv(EnvConfig())
    obs = env.reset(STRUCTURES["cluster-Cu5"])
    for name in TEACHER_NAMES:
        teacher = make_teacher(ExpertConfig(teacher=name), env, 0.2)
        assert type(teacher) is TEACHERS[name] and isinstance(teacher, Teacher)
        teacher.reset()
        assert teacher.offers(obs) and teacher.force_calls == 0
        assert teacher.action(obs).shape == (5, 3)
        assert (teacher.force_calls == 0) == (name == "bfgs")  # BFGS reuses the episode's forces
    assert not isinstance(object(), Teacher)
    with pytest.raises(ExpertError, match="TEACHER_NAMES"):
        register_teacher("lbfgs")


@pytest.mark.parametrize("teacher", ["bfgs", "newton"])
def test_expert_actors_report_their_teachers_force_calls(redis_server, teacher):
    """An expert actor sums its teachers' training-only force calls into each StepRecord; the hub totals them as
    actors/teacher_force_calls (the metrics.jsonl key): the Hessian teacher's calls, none for BFGS."""
    from pathlib import Path

    from helpers import actor_loop_on_redis

    actor, hub, replay = actor_loop_on_redis(
        redis_server.url, "expert", Path(__file__).resolve().parents[1] / "configs" / "tiny.toml",
        ["actors.insert_batch=1", "actors.envs_per_actor=2", f"expert.teacher='{teacher}'", "expert.p_start=1.0",
         "expert.p_end=1.0", "expert.teacher_max_atoms=8"])
    records = [actor.step() for _ in range(6)]
    spent = sum(t.force_calls for t in actor.source.teachers)
    assert sum(r.teacher_force_calls for r in records) == spent == hub.stats()["actors/teacher_force_calls"]
    assert (spent > 0) == (teacher == "newton")
    assert replay.sizes()["expert"] > 0


def _strained(atoms, seed: int):
    from actors.geometry import random_strain

    return random_strain(atoms, 0.04, np.random.default_rng(seed))


@pytest.mark.parametrize("name", ["bulk-Ni8", "bulk-Cu32", "slab-Pd12-fixed"])
def test_expert_on_the_cell_filter_reproduces_ase_bfgs_on_frechet_cell_filter(name):
    """env.relax_cell: the BFGS teacher moves the filter's rows (atoms and cell) as ase.optimize.BFGS does on
    FrechetCellFilter(atoms), step for step, fixed atoms included; fmax is the filter's generalised force."""
    from ase.constraints import FixAtoms
    from ase.filters import FrechetCellFilter

    if name == "slab-Pd12-fixed":
        atoms = STRUCTURES["slab-Pd12"].copy()
        atoms.pbc = True  # a periodic slab (vacuum in the cell), its bottom layer held
        atoms.set_constraint(FixAtoms(indices=range(4)))
    else:
        atoms = _strained(STRUCTURES[name], seed=1)
    fmax, max_steps = 0.05, 120
    ref = atoms.copy()
    ref.calc = CountingEMT()
    filt = FrechetCellFilter(ref)
    opt = BFGS(filt, logfile=None, maxstep=0.2)
    ref_states = []
    for _ in opt.irun(fmax=fmax, steps=max_steps):  # irun yields the start, then after every step
        ref_states.append((ref.get_positions(), ref.get_cell()[:]))

    env = RelaxEnv(EnvConfig(fmax=fmax, max_steps=max_steps, max_step=0.2, relax_cell=True))
    expert = BFGSExpert.from_config(ExpertConfig(), env, 0.2)
    obs = env.reset(atoms)
    start = atoms.copy()
    start.calc = EMT()
    assert obs.cell_forces.shape == (3, 3)
    assert obs.fmax == pytest.approx(float(np.linalg.norm(FrechetCellFilter(start).get_forces(), axis=1).max()))
    states = [(env.atoms.positions, env.atoms.cell[:])]
    while True:
        action = expert.action(obs)
        assert action.shape == (len(atoms) + 3, 3)
        step = env.step(action)
        obs = step.obs
        states.append((env.atoms.positions, env.atoms.cell[:]))
        if step.terminated or step.truncated:
            break
    assert env.steps == opt.nsteps and env.force_calls == ref.calc.calls
    assert len(states) == len(ref_states)
    for k, ((pos, cell), (rpos, rcell)) in enumerate(zip(states, ref_states)):
        np.testing.assert_allclose(cell, rcell, rtol=0, atol=1e-8, err_msg=f"{name}: cell at step {k}")
        np.testing.assert_allclose(pos, rpos, rtol=0, atol=1e-8, err_msg=f"{name}: positions at step {k}")
    assert step.terminated == opt.converged()
    assert np.array_equal(obs.cell, env.atoms.cell[:]) and not np.allclose(obs.cell, atoms.cell[:])
    if name == "slab-Pd12-fixed":  # the held atoms follow the cell only (fixed fractional positions)
        np.testing.assert_allclose(env.atoms.get_scaled_positions()[:4], atoms.get_scaled_positions()[:4], atol=1e-10)


def test_model_hessian_teacher_moves_as_the_model_hessian_head_would_with_the_fitted_model_hessian():
    """Its steps are ones the 'model-hessian' head can make: with the model Hessian fitted to the finite-difference
    Hessian in place of the network's, the head's move is the teacher's; fixed atoms stay still."""
    import torch
    from ase.constraints import FixAtoms

    from actors.hessian import held_mask
    from common.config import NetworkConfig
    from learner.graph import batch_graphs, with_neighbor_list
    from learner.heads import ModelHessianActor
    from learner.quasi_newton import fit_model_hessian

    env_cfg = EnvConfig(fmax=0.01, max_steps=50, history_steps=3)
    net = NetworkConfig(actor_head="model-hessian", path_history=True, dtype="float64", channels=4, num_layers=2,
                        cg_iterations=200)
    slab = STRUCTURES["slab-Pd12"].copy()
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    env = RelaxEnv(env_cfg)
    teacher = make_teacher(ExpertConfig(teacher="model-hessian", teacher_min_curvature=0.5), env, 0.2)
    obs = env.reset(slab)
    for _ in range(2):  # a path with two remembered steps
        obs = env.step(0.01 * obs.forces).obs
    obs = with_neighbor_list(obs, net)
    move = teacher.action(obs)
    assert teacher.force_calls == 2 * 3 * 8  # the Hessian over the 8 free atoms; the env's count is untouched
    g = batch_graphs([obs], net)
    full = np.zeros((36, 36))
    free = free_coordinates(env.atoms)
    full[np.ix_(free, free)] = finite_difference_hessian(env.atoms, EMT(), free)
    fitted = fit_model_hessian(torch.as_tensor(full), g.edge_index, g.edge_vectors(),
                               torch.as_tensor(held_mask(env.atoms)), 0.5)

    class Fitted(ModelHessianActor):
        def model_hessian(self, graph):
            return fitted

    head = Fitted(net, EnvConfig(max_step=0.2, history_steps=3)).ungated(g).detach().numpy()
    np.testing.assert_allclose(move, head, atol=1e-8)
    assert np.abs(move[:4]).max() == 0.0 and np.abs(move).max() > 0


@pytest.mark.parametrize("name", ["cluster-Cu5", "cluster-AuPt7", "slab-Pd12"])
def test_model_hessian_teacher_relaxes_in_fewer_force_calls_than_bfgs(name):
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=100, history_steps=5))
    teacher = make_teacher(ExpertConfig(teacher="model-hessian", teacher_min_curvature=0.5), env, 0.2)
    run = _episode(env, teacher, STRUCTURES[name])
    assert run["converged"] and run["force_calls"] == run["steps"] + 1
    bfgs = _episode(RelaxEnv(EnvConfig(fmax=0.05, max_steps=100)), BFGSExpert(maxstep=0.2), STRUCTURES[name])
    assert run["force_calls"] < bfgs["force_calls"]


def test_curvature_probes_measure_hessian_columns_and_reuse_the_teachers_hessian():
    from actors.hessian import CurvatureProbe, columns_of

    slab = STRUCTURES["slab-Pd12"].copy()
    from ase.constraints import FixAtoms

    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    env = RelaxEnv(EnvConfig(fmax=0.05, max_steps=20, history_steps=2))
    obs = env.reset(slab)
    probe = CurvatureProbe(3, EMT, np.random.default_rng(0))
    atoms, cols = probe.measure(env.atoms, obs.free)
    assert len(atoms) == 3 and set(atoms.tolist()) <= set(range(4, 12))  # free atoms only
    assert probe.force_calls == 18  # 6 per probed atom
    free = free_coordinates(env.atoms)
    hessian = finite_difference_hessian(env.atoms, EMT(), free)
    np.testing.assert_allclose(cols, columns_of(hessian, free, atoms), atol=1e-4)
    teacher = make_teacher(ExpertConfig(teacher="model-hessian"), env, 0.2)
    teacher.action(obs)
    again, cols2 = probe.measure(env.atoms, obs.free, teacher.last_hessian)
    assert probe.force_calls == 18  # sliced from the teacher's Hessian of the same state: no new force call
    np.testing.assert_allclose(cols2, columns_of(teacher.last_hessian[1], free, again))
    env.step(0.01 * obs.forces)
    probe.measure(env.atoms, obs.free, teacher.last_hessian)  # another state: measured again
    assert probe.force_calls == 36


def test_model_hessian_teacher_takes_the_runs_neighbour_graph():
    """Without an edge list in the observation the teacher builds the graph of the run's network (its radius and
    max_neighbors), the graph the head fits on: a 3.2 Å radius gives another move than the default 5 Å."""
    from common.config import NetworkConfig
    from learner.graph import with_neighbor_list

    short = NetworkConfig(radius=3.2, max_neighbors=8)
    moves = {}
    for label, net in (("short", short), ("default", None)):
        env = RelaxEnv(EnvConfig(fmax=0.01, max_steps=50, history_steps=3))
        teacher = make_teacher(ExpertConfig(teacher="model-hessian", teacher_min_curvature=0.5), env, 0.2, net)
        obs = env.reset(STRUCTURES["cluster-AuPt7"])
        assert obs.edge_index is None
        moves[label] = teacher.action(obs)
        if net is not None:  # the same move as from the observation carrying that graph's edges
            np.testing.assert_allclose(teacher.step(teacher.last_hessian[1], with_neighbor_list(obs, net)),
                                       moves[label], atol=1e-10)
    assert np.abs(moves["short"] - moves["default"]).max() > 1e-4
