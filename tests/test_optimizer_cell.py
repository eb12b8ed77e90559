"""RLOptimizer on cell filters (FrechetCellFilter, UnitCellFilter, relax_cell=True): what the untrained policy is over
the filter's rows, the same moves as the training environment with env.relax_cell, constraints, ASE's fmax; real EMT."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import FIRE

from actors.env import RelaxEnv
from actors.geometry import random_strain
from common.config import load_config
from common.observation import history_after
from helpers import lbfgs_reference
from learner.policy import Policy
from relaxrl.optimizer import CountingCalculator, RLOptimizer

STEP_SIZE = 0.02


def strained_cu(seed: int = 0, reps=(2, 1, 1)):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    atoms.rattle(0.08, seed=seed)
    return random_strain(atoms, 0.04, np.random.default_rng(seed))


def cell_policy(zero: bool, max_step: float = 0.2, relax_cell: bool = True, history: int = 4) -> Policy:
    """An untrained quasi-Newton policy (relax_cell), its outputs all zero (the documented start) or random."""
    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "network.actor_head='quasi-newton'",
                             "network.path_history=true", f"network.step_size={STEP_SIZE}", "network.dtype='float64'",
                             f"env.history_steps={history}", f"env.max_step={max_step}",
                             f"env.relax_cell={'true' if relax_cell else 'false'}"])
    torch.manual_seed(1)
    policy = Policy(cfg)
    heads = [policy.actor.head] + ([policy.actor.cell_head] if policy.actor.cell_head is not None else [])
    for head in heads:
        for p in head.parameters():
            torch.nn.init.zeros_(p) if zero else torch.nn.init.normal_(p, std=1.0)
    return policy


def lbfgs_on_filter(atoms, steps: int, max_step: float, history: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """The documented untrained move, written out: textbook L-BFGS (H0 = γ I, Nocedal's scaling, first step
    STEP_SIZE·F) over the rows of ASE's FrechetCellFilter, bounded by max_step: the longest atom row, or the cell
    block's largest singular value (its length that a rotation does not change), whichever is longer."""
    filt = FrechetCellFilter(atoms)
    hist = np.zeros((len(atoms) + 3, 6 * history))
    states = []
    for _ in range(steps):
        x, f = filt.get_positions(), filt.get_forces()
        d = lbfgs_reference(f, hist, STEP_SIZE)
        n = len(atoms)
        longest = max(np.linalg.norm(d[:n], axis=1).max(), np.linalg.norm(d[n:], ord=2))
        d *= min(1.0, max_step / longest)
        filt.set_positions(x + d)
        hist = history_after(filt.get_positions() - x, f, filt.get_forces(), hist)
        states.append((atoms.get_positions(), atoms.get_cell()[:]))
    return states


@pytest.mark.parametrize("max_step", [0.2, 0.02])
def test_untrained_policy_on_frechet_cell_filter_is_lbfgs_over_its_rows(max_step):
    start = strained_cu(seed=2)
    ref = start.copy()
    ref.calc = EMT()
    expected = lbfgs_on_filter(ref, 8, max_step)
    atoms = start.copy()
    atoms.calc = EMT()
    opt = RLOptimizer(FrechetCellFilter(atoms), policy=cell_policy(zero=True, max_step=max_step), logfile=None)
    run = opt.irun(fmax=1e-9, steps=8)
    next(run)
    for k, (pos, cell) in enumerate(expected):
        next(run)
        np.testing.assert_allclose(atoms.get_cell()[:], cell, rtol=0, atol=1e-9, err_msg=f"cell after step {k + 1}")
        np.testing.assert_allclose(atoms.positions, pos, rtol=0, atol=1e-9, err_msg=f"positions after step {k + 1}")
    assert not np.allclose(atoms.get_cell()[:], start.get_cell()[:])


def test_moves_on_the_filter_equal_the_training_environments_step_for_step():
    """RelaxEnv(env.relax_cell) and RLOptimizer(FrechetCellFilter) with the same (random) policy: same rows, same
    cell, same a_back, same observations."""
    policy = cell_policy(zero=False, max_step=0.1)
    start = strained_cu(seed=4)
    env = RelaxEnv(policy.config.env)
    obs = env.reset(start)
    atoms = start.copy()
    atoms.calc = EMT()
    opt = RLOptimizer(atoms, policy=policy, logfile=None, relax_cell=True, max_energy_rise=math.inf)
    run = opt.irun(fmax=1e-9, steps=6)
    next(run)
    for _ in range(6):
        mine = opt._observe()
        for name in ("forces", "cell_forces", "history", "cell_history"):
            np.testing.assert_allclose(getattr(mine, name), getattr(obs, name), rtol=0, atol=1e-10, err_msg=name)
        result = env.step(policy.act(obs))
        obs = result.obs
        next(run)
        np.testing.assert_allclose(atoms.get_cell()[:], env.atoms.get_cell()[:], rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.positions, env.atoms.positions, rtol=0, atol=1e-10)
        assert opt.last_a_back == pytest.approx(result.info["a_back"], abs=1e-12)


def test_the_untrained_policy_relaxes_a_strained_cell_to_the_filters_fmax():
    """fmax is the filter's generalised force (atoms and cell rows), as for ASE's optimizers; a policy trained without
    the cell moves it too (its atoms' compliance), through UnitCellFilter as well."""
    for policy, wrap in ((cell_policy(zero=True), FrechetCellFilter),
                         (cell_policy(zero=True, relax_cell=False), UnitCellFilter)):
        atoms = strained_cu(seed=5)
        atoms.calc = CountingCalculator(EMT(), stress=True)
        filt = wrap(atoms)
        opt = RLOptimizer(filt, policy=policy, logfile=None)
        assert opt.run(fmax=0.05, steps=200)
        rows = np.linalg.norm(filt.get_forces(), axis=1)
        assert rows.max() < 0.05 and opt.summary()["fmax"] == pytest.approx(rows.max())
        assert np.abs(atoms.get_stress()).max() < 0.05 * len(atoms) / atoms.get_volume() * 3
        assert opt.summary()["force_calls"] == atoms.calc.calls  # stress comes with each call, never on its own


def test_fixed_atoms_keep_their_place_in_the_cell():
    atoms = strained_cu(seed=6)
    atoms.set_constraint(FixAtoms(indices=[0, 3]))
    atoms.calc = EMT()
    frac = atoms.get_scaled_positions()[[0, 3]]
    RLOptimizer(atoms, policy=cell_policy(zero=True), logfile=None, relax_cell=True).run(fmax=0.05, steps=60)
    np.testing.assert_allclose(atoms.get_scaled_positions()[[0, 3]], frac, atol=1e-10)


def test_counting_calculator_counts_one_call_per_geometry_on_a_filter_and_times_it():
    atoms = strained_cu(seed=7)
    atoms.calc = CountingCalculator(EMT(), stress=True)
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=0.05, steps=15)
    assert atoms.calc.calls == opt.nsteps + 1 and atoms.calc.seconds > 0
    plain = strained_cu(seed=7)  # the policy's guard asks for the energy first, the filter then for the stress
    plain.calc = CountingCalculator(EMT(), stress=True)
    opt = RLOptimizer(plain, policy=cell_policy(zero=True), logfile=None, relax_cell=True)
    opt.run(fmax=1e-9, steps=5)
    assert plain.calc.calls == 5 + 1 == opt.summary()["force_calls"]
