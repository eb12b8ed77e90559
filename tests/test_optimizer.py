"""RLOptimizer: the environment's correction, ASE's optimizer contract, hybrid hand-over, counting."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.io import read
from ase.optimize import BFGS

from actors.env import RelaxEnv, correct_action
from common.config import RunConfig, from_dict, load_config
from common.errors import RelaxRLError
from common.observation import Observation, env_features
from learner.policy import Policy, load_policy, save_policy
from relaxrl.optimizer import (
    CountingCalculator,
    PolicyDivergedError,
    RLOptimizer,
    UnsupportedOptimizableError,
    energy_rise_limit,
)


class ForcePolicy:
    """A policy-shaped stand-in: displacement = step × forces (steepest descent), same interface as learner.policy.Policy."""

    def __init__(self, step: float = 0.05, config: RunConfig | None = None) -> None:
        self.step = step
        self.config = config or RunConfig()

    def observe(self, atoms: Atoms, forces: np.ndarray, energy: float, step_fraction: float = 0.0,
                last_a_back: float = 0.0, cell_forces: np.ndarray | None = None) -> Observation:
        obs = Observation(positions=atoms.get_positions(), numbers=atoms.numbers.astype(np.int64),
                          cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy(), forces=np.array(forces),
                          energy=float(energy), cell_forces=cell_forces)
        obs.env_features = env_features(obs.fmax, step_fraction, last_a_back, self.config.env.env_input_dim)
        return obs

    def act(self, obs: Observation) -> np.ndarray:
        return self.step * obs.row_forces()  # [n_rows, 3]: steepest descent over the atoms (and a filter's cell rows)


class PushPolicy(ForcePolicy):
    """Moves atom 0 straight onto atom 1 by ``length`` Å: the correction must take part of it back."""

    def __init__(self, length: float) -> None:
        super().__init__()
        self.length = length

    def act(self, obs: Observation) -> np.ndarray:
        d = np.zeros_like(obs.positions)
        v = obs.positions[1] - obs.positions[0]
        d[0] = self.length * v / np.linalg.norm(v)
        return d


def rattled_cu(seed: int = 1, stdev: float = 0.1) -> Atoms:
    atoms = bulk("Cu", cubic=True) * (2, 2, 2)  # 32 atoms
    atoms.rattle(stdev, seed=seed)
    atoms.calc = EMT()
    return atoms


@pytest.fixture(scope="module")
def features_policy(tmp_path_factory) -> Policy:
    """A freshly initialised e3nn policy with all three env features, saved and loaded as a checkpoint."""
    cfg = load_config(None, ["env.env_input_dim=3", "network.channels=8",
                             "network.num_layers=2"])
    torch.manual_seed(0)
    path = save_policy(tmp_path_factory.mktemp("run"), cfg, Policy(cfg).actor)
    return load_policy(path)


def test_steps_match_the_environment_step_for_step(features_policy):
    """Same structure, same policy: the optimizer's moves, a_back and observations equal RelaxEnv's."""
    start = rattled_cu(seed=3)
    env = RelaxEnv(features_policy.config.env)
    obs = env.reset(start)
    atoms = start.copy()
    atoms.calc = EMT()
    # the untrained policy wrecks the structure; the guard (tested on its own) would stop it
    opt = RLOptimizer(atoms, policy=features_policy, logfile=None, max_energy_rise=math.inf)
    run = opt.irun(fmax=1e-6, steps=6)
    next(run)  # the initial evaluation
    a_backs = []
    for _ in range(6):
        opt_obs = opt._observe()
        np.testing.assert_allclose(opt_obs.env_features, obs.env_features, rtol=0, atol=1e-12)
        np.testing.assert_allclose(opt_obs.forces, obs.forces, rtol=0, atol=1e-12)
        result = env.step(features_policy.act(obs))
        obs = result.obs
        next(run)
        np.testing.assert_allclose(atoms.positions, obs.positions, rtol=0, atol=1e-10)
        assert opt.last_a_back == pytest.approx(result.info["a_back"], abs=1e-12)
        a_backs.append(opt.last_a_back)
    assert opt.nsteps == 6 and opt.summary()["steps_rl"] == 6


@pytest.mark.parametrize("length, taken_back", [(0.05, False), (0.19, True), (1.5, True)])
def test_collision_is_corrected_with_the_env_function(length, taken_back):
    """A move onto a neighbour is shortened exactly as actors.env.correct_action does it."""
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.7, 0, 0]])  # limit: 0.6 × 2 × 1.32 Å = 1.584 Å
    atoms.calc = EMT()
    policy = PushPolicy(length)
    before = atoms.positions.copy()
    expected, a_back = correct_action(atoms, policy.act(policy.observe(atoms, atoms.get_forces(), 0.0)),
                                      policy.config.env)
    opt = RLOptimizer(atoms, policy=policy, logfile=None, max_energy_rise=math.inf)  # a push is an energy rise
    opt.run(fmax=1e-6, steps=1)
    np.testing.assert_allclose(atoms.positions - before, expected, atol=1e-12)
    assert opt.last_a_back == pytest.approx(a_back)
    assert (a_back > 0) == taken_back
    d = np.linalg.norm(atoms.positions[1] - atoms.positions[0])
    assert d >= 0.6 * 2 * 1.32 - 1e-9  # never closer than min_distance_factor × (r_cov + r_cov)


def test_converges_on_rattled_bulk_like_ase_optimizers():
    """ASE's optimizer test pattern: EMT, rattled bulk, run(fmax) converges and the forces say so."""
    atoms = rattled_cu()
    opt = RLOptimizer(atoms, policy=ForcePolicy(0.05), logfile=None)
    assert opt.run(fmax=0.05, steps=300) is True
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05
    s = opt.summary()
    assert s["converged"] and s["mode"] == "rl" and s["finished_by"] == "rl"
    assert s["force_calls"] == s["steps"] + 1 and s["energy_change"] < 0


def test_reports_not_converged_honestly(features_policy):
    """A budget too small to converge: run() returns False and the summary agrees with the forces."""
    atoms = rattled_cu(seed=2, stdev=0.2)
    atoms.calc = CountingCalculator(EMT())
    opt = RLOptimizer(atoms, policy=features_policy, logfile=None, max_energy_rise=math.inf)
    assert opt.run(fmax=0.01, steps=3) is False
    s = opt.summary()
    assert not s["converged"] and s["steps"] == 3
    assert s["fmax"] == pytest.approx(np.linalg.norm(atoms.get_forces(), axis=1).max())
    assert s["force_calls"] == atoms.calc.calls  # the optimizer's count equals the calculator's


def test_checkpoint_argument_loads_the_policy(tmp_path):
    cfg = load_config(None, ["network.channels=8", "network.num_layers=2"])
    save_policy(tmp_path, cfg, Policy(cfg).actor)
    atoms = rattled_cu()
    opt = RLOptimizer(atoms, checkpoint=tmp_path, logfile=None)  # a run directory: its newest checkpoint
    opt.run(fmax=0.05, steps=2)
    assert opt.nsteps == 2 and opt.policy.config.network.channels == 8


def test_logfile_trajectory_attach_and_irun(tmp_path):
    atoms = rattled_cu()
    log = io.StringIO()
    calls = []
    traj = tmp_path / "relax.traj"
    opt = RLOptimizer(atoms, policy=ForcePolicy(0.05), logfile=log, trajectory=str(traj))
    opt.attach(lambda: calls.append(opt.nsteps), interval=2)
    converged = list(opt.irun(fmax=0.05, steps=5))
    assert len(converged) == 6 and not any(converged)  # the initial state plus 5 steps
    opt.run(fmax=0.05, steps=1)  # run() continues the same optimizer
    lines = log.getvalue().splitlines()
    assert lines[0].split()[:2] == ["Step", "Time"] and lines[1].startswith("RLOptimizer:")
    assert len(lines) == 1 + 7 and lines[-1].split()[1] == "6"
    assert calls == [0, 2, 4, 6]
    frames = read(traj, index=":")
    assert len(frames) == 7
    np.testing.assert_allclose(frames[-1].positions, atoms.positions)
    assert frames[-1].get_potential_energy() == pytest.approx(atoms.get_potential_energy())


def test_filters_without_atom_rows_are_refused_with_a_clear_message():
    from ase.filters import Filter, StrainFilter

    atoms = rattled_cu()
    with pytest.raises(UnsupportedOptimizableError, match="StrainFilter of 32 atoms.*FrechetCellFilter"):
        RLOptimizer(StrainFilter(atoms), policy=ForcePolicy(), logfile=None)
    with pytest.raises(UnsupportedOptimizableError, match="cannot optimize a Filter"):
        RLOptimizer(Filter(atoms, indices=[0, 1]), policy=ForcePolicy(), logfile=None)
    with pytest.raises(RelaxRLError, match=r"relax_cell=True\) wraps plain atoms"):
        RLOptimizer(FrechetCellFilter(atoms), policy=ForcePolicy(), logfile=None, relax_cell=True)


def test_fixed_atoms_stay_fixed():
    atoms = rattled_cu()
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    fixed = atoms.positions[:2].copy()
    RLOptimizer(atoms, policy=ForcePolicy(0.05), logfile=None).run(fmax=0.05, steps=20)
    np.testing.assert_array_equal(atoms.positions[:2], fixed)


def test_hybrid_hands_over_to_bfgs_and_reports_both_parts():
    """A policy that stops making progress (zero moves) hands over after k steps; BFGS finishes."""
    atoms = rattled_cu()
    atoms.calc = CountingCalculator(EMT())
    opt = RLOptimizer(atoms, policy=ForcePolicy(0.0), logfile=None, hybrid_patience=3)
    assert opt.run(fmax=0.05, steps=200)
    s = opt.summary()
    assert s["mode"] == "hybrid" and s["finished_by"] == "bfgs" and s["handover_step"] == 3
    assert s["steps_rl"] == 3 and s["steps_bfgs"] > 0 and s["steps"] == s["steps_rl"] + s["steps_bfgs"]
    assert s["force_calls"] == atoms.calc.calls == s["force_calls_rl"] + s["force_calls_bfgs"]
    assert s["force_calls_rl"] == 1  # zero moves cost nothing beyond the initial evaluation
    # From the hand-over on, the steps are exactly ase.optimize.BFGS's from the same start.
    ref = rattled_cu()
    ref.calc = CountingCalculator(EMT())
    bfgs = BFGS(ref, logfile=None)
    bfgs.run(fmax=0.05, steps=200)
    assert bfgs.nsteps == s["steps_bfgs"] and ref.calc.calls == s["force_calls"]
    np.testing.assert_allclose(ref.positions, atoms.positions, atol=1e-10)


def test_hybrid_without_stall_stays_with_the_policy():
    atoms = rattled_cu()
    opt = RLOptimizer(atoms, policy=ForcePolicy(0.05), logfile=None, hybrid_patience=5)
    assert opt.run(fmax=0.05, steps=300)
    s = opt.summary()
    assert s["finished_by"] == "rl" and s["steps_bfgs"] == 0 and s["handover_step"] is None


def test_counting_calculator_counts_real_calculations_only():
    atoms = rattled_cu()
    calc = CountingCalculator(EMT())
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_forces()
    assert calc.calls == 1  # one geometry, energy and forces computed together
    atoms.positions[0, 0] += 0.01
    e = atoms.get_potential_energy()
    assert calc.calls == 2
    ref = atoms.copy()
    ref.calc = EMT()
    assert e == pytest.approx(ref.get_potential_energy())
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces())


class HistoryPolicy(ForcePolicy):
    """Steepest descent plus the previous move: records every observation it is shown."""

    def __init__(self, config: RunConfig | None = None) -> None:
        super().__init__(step=0.04, config=config)
        self.seen: list[Observation] = []

    def observe(self, atoms, forces, energy, step_fraction=0.0, last_a_back=0.0):
        return Observation.from_atoms(atoms, forces=forces, energy=energy)

    def act(self, obs: Observation) -> np.ndarray:
        self.seen.append(obs)
        return self.step * obs.forces + 0.5 * obs.history[:, :3]


@pytest.mark.parametrize("steps", [1, 3])
def test_rl_optimizer_builds_the_same_path_history_as_the_env(steps):
    config = from_dict({"env": {"history_steps": steps}})
    start = Atoms("Cu5", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0], [0.1, 0.2, 2.3], [1.3, 1.3, 1.2]])
    env = RelaxEnv(config.env)
    env_policy = HistoryPolicy(config)
    obs = env.reset(start)
    for _ in range(6):
        obs = env.step(env_policy.act(obs)).obs
    atoms = start.copy()
    atoms.calc = EMT()
    opt_policy = HistoryPolicy(config)
    RLOptimizer(atoms, policy=opt_policy, logfile=None).run(fmax=1e-4, steps=6)
    assert len(opt_policy.seen) == 6
    for a, b in zip(env_policy.seen, opt_policy.seen):
        assert a.history.shape == b.history.shape == (5, 6 * steps)
        assert np.allclose(a.history, b.history, atol=1e-10)
        assert np.allclose(a.positions, b.positions, atol=1e-10)
    assert np.abs(opt_policy.seen[-1].history).max() > 0


def test_rl_optimizer_never_moves_fixed_atoms_and_records_their_zero_move():
    atoms = bulk("Cu", cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=2)
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    start = atoms.get_positions()
    atoms.calc = EMT()
    policy = HistoryPolicy()
    RLOptimizer(atoms, policy=policy, logfile=None).run(fmax=1e-4, steps=5)
    assert np.array_equal(atoms.get_positions()[:2], start[:2])
    assert np.abs(policy.seen[-1].history[:2]).max() == 0.0
    assert policy.seen[-1].free[:2].max() == 0.0 and policy.seen[-1].free[2:].min() == 1.0  # as RelaxEnv marks them


# ----------------------------------------------------------------------------- safety guard


class ScatterPolicy(ForcePolicy):
    """Pushes every atom away from the centroid by ``length`` Å per step, as a checkpoint that does not fit does."""

    def __init__(self, length: float = 0.3) -> None:
        super().__init__()
        self.length = length

    def act(self, obs: Observation) -> np.ndarray:
        out = obs.positions - obs.positions.mean(axis=0)
        return self.length * out / np.linalg.norm(out, axis=1, keepdims=True)


def test_a_policy_that_raises_the_energy_is_stopped_and_the_atoms_put_back(tmp_path):
    atoms = rattled_cu()  # 32 atoms: limit max(1 eV, 0.5 eV/atom × 32) = 16 eV
    start, e0 = atoms.get_positions(), atoms.get_potential_energy()
    opt = RLOptimizer(atoms, policy=ScatterPolicy(), logfile=None, trajectory=str(tmp_path / "t.traj"))
    assert opt.max_energy_rise == energy_rise_limit(32) == 16.0
    with pytest.raises(PolicyDivergedError, match=r"raised the energy of Cu32 by [\d.]+ eV in \d+ step\(s\).*more than "
                       r"the 16 eV allowed \(max\(1 eV, 0.5 eV/atom × 32 atoms\)\).*put back.*hybrid_patience") as e:
        opt.run(fmax=0.05, steps=50)
    assert "\n" not in str(e.value)
    assert opt.guard_tripped is not None and opt.guard_tripped["energy_rise"] > 16.0
    assert opt.guard_tripped["step"] < 50  # stopped long before the budget ran out
    np.testing.assert_array_equal(atoms.get_positions(), start)  # the caller's atoms are not left wrecked
    assert atoms.get_potential_energy() == pytest.approx(e0)


def test_in_hybrid_mode_bfgs_takes_over_from_the_start_when_the_guard_trips():
    atoms = rattled_cu()
    opt = RLOptimizer(atoms, policy=ScatterPolicy(), logfile=None, hybrid_patience=5)
    assert opt.run(fmax=0.05, steps=200)
    s = opt.summary()
    assert s["finished_by"] == "bfgs" and s["guard_tripped"] and s["guard_tripped"]["energy_rise"] > 16.0
    assert not s["restored_best"]  # BFGS starts from the starting geometry, not a point of the scattered path
    ref = rattled_cu()
    BFGS(ref, logfile=None).run(fmax=0.05, steps=200)
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-8)  # the same minimum as BFGS alone
    assert s["energy_change"] < 0


@pytest.mark.parametrize("limit", [0.0, -1.0, math.nan])
def test_max_energy_rise_must_be_positive(limit):
    with pytest.raises(RelaxRLError, match="max_energy_rise must be > 0 eV"):
        RLOptimizer(rattled_cu(), policy=ForcePolicy(), logfile=None, max_energy_rise=limit)


def _flat_cell_cu() -> Atoms:
    atoms = bulk("Cu", cubic=True)
    cell = atoms.cell.array.copy()
    cell[2] = cell[0] + cell[1]  # c = a + b: the three vectors in one plane
    atoms.set_cell(cell)
    return atoms


def _nan_cu() -> Atoms:
    atoms = bulk("Cu", cubic=True)
    atoms.positions[1] = np.nan
    return atoms


def _overlapping_cu() -> Atoms:
    atoms = bulk("Cu", cubic=True)
    atoms.positions[1] = atoms.positions[0] + [0.9, 0.0, 0.0]  # 0.9 Å < 0.6 × 2 × 1.32 Å
    return atoms


@pytest.mark.parametrize("make, relax_cell, needles", [
    (_flat_cell_cu, False, ["its cell is singular", "give the structure's real cell", "niggli_reduce"]),
    (_flat_cell_cu, True, ["its cell is singular"]),  # the atoms inside the filter are checked
    (_nan_cu, False, ["non-finite coordinates (NaN or inf)", "fix its positions"]),
    (_overlapping_cu, False, ["overlap at 0.900 Å", "use a checkpoint trained with a lower env.min_distance_factor"]),
    (lambda: bulk("Si"), False, ["contains Si, which the 'EMT' calculator does not handle", "atoms.calc"]),
])
def test_rl_optimizer_refuses_what_relax_refuses_before_any_calculation(make, relax_cell, needles):
    """RLOptimizer used from Python checks the structure as `relaxrl relax` does (actors.structure_check): a flat
    cell, NaN positions, overlapping atoms or an element EMT lacks is one ValueError naming the problem and the
    fix, raised at construction, before the calculator (real EMT, wrapped in a counter) is called."""
    atoms = make()
    counted = CountingCalculator(EMT())
    atoms.calc = counted
    before = atoms.positions.copy()
    with pytest.raises(ValueError) as e:
        RLOptimizer(atoms, policy=ForcePolicy(), logfile=None, relax_cell=relax_cell)
    message = str(e.value)
    assert message.startswith("RLOptimizer: structure ") and "\n" not in message, message
    assert all(n in message for n in needles), message
    assert counted.calls == 0
    np.testing.assert_array_equal(atoms.positions, before)


def test_rl_optimizer_checks_with_the_policys_min_distance_factor():
    """The overlap rule is the policy's own env.min_distance_factor: a pair the default 0.6 accepts is refused
    under a policy trained with 0.9, and the message names 0.9."""
    atoms = Atoms("Cu2", positions=[[0.0, 0.0, 0.0], [2.2, 0.0, 0.0]])  # a dimer at 0.83 × (2 × 1.32 Å)
    atoms.calc = EMT()
    RLOptimizer(atoms, policy=ForcePolicy(), logfile=None)  # 0.6: accepted
    strict = ForcePolicy(config=load_config(None, ["env.min_distance_factor=0.9"]))
    with pytest.raises(ValueError, match=r"overlap at 2\.200 Å.*at least 0\.9 × the radii sum apart"):
        RLOptimizer(atoms, policy=strict, logfile=None)
