"""The quasi-Newton maths of learner/quasi_newton.py on plain tensors (no graph, no neighbour list), float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import lbfgs_reference
from learner.quasi_newton import lbfgs_direction, positive_curvature, quasi_newton_step, secant_scale


def quadratic_path(n_atoms: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(forces [n, 3], history [n, 6·steps]) after ``steps`` steepest-descent moves on a random SPD quadratic."""
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(3 * n_atoms, 3 * n_atoms))
    hessian = m @ m.T / (3 * n_atoms) + np.eye(3 * n_atoms)  # eV/Å², SPD
    x = rng.normal(size=3 * n_atoms)
    f = -hessian @ x
    hist = np.zeros((n_atoms, 6 * steps))
    for _ in range(steps):
        move = 0.05 * f
        x = x + move
        f_new = -hessian @ x
        hist = np.concatenate([np.concatenate([move.reshape(-1, 3), (f_new - f).reshape(-1, 3)], axis=1), hist[:, :-6]], axis=1)
        f = f_new
    return f.reshape(-1, 3), hist


def batch_of(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Concatenated (forces, history, batch, n_graphs) of several structures."""
    forces = torch.as_tensor(np.concatenate([f for f, _ in parts]))
    history = torch.as_tensor(np.concatenate([h for _, h in parts]))
    batch = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor([len(f) for f, _ in parts]))
    return forces, history, batch, len(parts)


@pytest.mark.parametrize("sy,ss,yy,expected", [
    (1.0, 1.0, 1.0, True),
    (1e-3, 1.0, 1.0, True),
    (1e-10, 1.0, 1.0, False),  # positive, but below 1e-8·|s||y|
    (0.0, 1.0, 1.0, False),
    (-1.0, 1.0, 1.0, False),
    (0.0, 0.0, 0.0, False),  # no move remembered
])
def test_positive_curvature(sy: float, ss: float, yy: float, expected: bool) -> None:
    t = torch.tensor
    assert bool(positive_curvature(t([sy]), t([ss]), t([yy]))[0]) is expected


def test_quasi_newton_step_with_a_uniform_compliance_is_textbook_lbfgs_per_structure() -> None:
    """With C_i = c·I, H0 is c·I before the first curved pair and γ·I after it: Nocedal's L-BFGS on each structure."""
    one_step = quadratic_path(5, 1, seed=2)
    parts = [quadratic_path(4, 3, seed=0), quadratic_path(6, 3, seed=1),
             (one_step[0], np.concatenate([one_step[1], np.zeros((5, 12))], axis=1)),
             (quadratic_path(3, 1, seed=3)[0], np.zeros((3, 18)))]  # no step taken yet
    forces, history, batch, n_graphs = batch_of(parts)
    compliance = 0.02 * torch.eye(3, dtype=torch.float64).expand(len(forces), 3, 3)
    d = quasi_newton_step(forces, history, compliance, batch, n_graphs, max_step=100.0).numpy()
    for k, (f, h) in enumerate(parts):
        np.testing.assert_allclose(d[batch.numpy() == k], lbfgs_reference(f, h, 0.02), rtol=1e-9, atol=1e-12)


def test_the_secant_scale_and_the_two_loop_skip_the_same_pairs() -> None:
    """A newest pair with s·y > 0 but below the curvature threshold counts in neither: the scale is the older pair's."""
    f, h = quadratic_path(4, 2, seed=5)
    s_old, y_old = h[:, 6:9].ravel(), -h[:, 9:12].ravel()
    s = np.random.default_rng(6).normal(size=s_old.size)
    y = np.random.default_rng(7).normal(size=s_old.size)
    y -= (s @ y) / (s @ s) * s  # s·y = 0 ...
    y += 1e-10 * np.linalg.norm(y) / np.linalg.norm(s) * s  # ... then just positive: 1e-10·|s||y|
    assert s @ y > 0
    h[:, :3], h[:, 3:6] = s.reshape(-1, 3), -y.reshape(-1, 3)
    forces, history, batch, n_graphs = batch_of([(f, h)])
    gamma, found = secant_scale(history, batch, n_graphs)
    assert bool(found[0]) and float(gamma[0]) == pytest.approx((s_old @ y_old) / (y_old @ y_old), rel=1e-12)

    without_newest = history.clone()
    without_newest[:, :6] = 0.0
    h0 = lambda v: 0.02 * v  # noqa: E731
    np.testing.assert_allclose(lbfgs_direction(forces, history, batch, n_graphs, h0),
                               lbfgs_direction(forces, without_newest, batch, n_graphs, h0), rtol=1e-12, atol=1e-14)


def test_quasi_newton_step_goes_downhill_and_is_bounded_for_any_spd_compliance() -> None:
    parts = [quadratic_path(5, 3, seed=8), quadratic_path(7, 3, seed=9)]
    forces, history, batch, n_graphs = batch_of(parts)
    a = torch.as_tensor(np.random.default_rng(10).normal(size=(len(forces), 3, 3)))
    compliance = a @ a.transpose(-1, -2) + 0.01 * torch.eye(3, dtype=torch.float64)  # SPD, badly scaled
    d = quasi_newton_step(forces, history, compliance, batch, n_graphs, max_step=0.1)
    per_graph = torch.zeros(n_graphs, dtype=d.dtype).index_add_(0, batch, (d * forces).sum(-1))
    assert (per_graph > 0).all()
    assert float(d.norm(dim=-1).max()) <= 0.1 + 1e-12
