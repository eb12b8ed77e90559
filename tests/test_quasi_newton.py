"""The quasi-Newton maths of learner/quasi_newton.py on plain tensors (no graph, no neighbour list), float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import lbfgs_reference, preconditioned_lbfgs_reference
from learner.quasi_newton import (
    ModelHessian,
    fit_model_hessian,
    graph_dot,
    lbfgs_direction,
    model_hessian_step,
    positive_curvature,
    quasi_newton_step,
    secant_scale,
)


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


# ----------------------------------------------------------------------------- the sparse model Hessian


def random_model(sizes: list[int], seed: int, with_free: bool = True, vectors: int = 0) -> tuple[ModelHessian, torch.Tensor]:
    """A ModelHessian over random edges within each structure of ``sizes`` atoms (and its per-atom batch index), with
    ``vectors`` random rank-one terms per edge block."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    edges, offset = [], 0
    for m in sizes:
        edges += [(offset + j, offset + i) for i in range(m) for j in range(m) if i != j and rng.random() < 0.6]
        edges += [(offset, offset)]  # an atom's own periodic image: couples nothing
        offset += m
    ei = torch.tensor(edges).T
    vec = torch.as_tensor(rng.normal(size=(ei.shape[1], 3)))
    free = torch.as_tensor((rng.random((n, 3)) > 0.25).astype(float)) if with_free else None
    model = ModelHessian(diag=torch.as_tensor(rng.uniform(0.2, 2.0, n)), edge_index=ei,
                         alpha=torch.as_tensor(rng.uniform(0, 5, ei.shape[1])), beta=torch.as_tensor(rng.uniform(0, 5, ei.shape[1])),
                         direction=vec / vec.norm(dim=1, keepdim=True), free=free,
                         vectors=torch.as_tensor(rng.normal(size=(ei.shape[1], vectors, 3))) if vectors else None)
    return model, torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def dense(model: ModelHessian, n: int) -> np.ndarray:
    """P as a dense [3n, 3n] matrix, column by column through matvec."""
    eye = torch.eye(3 * n, dtype=torch.float64)
    return torch.stack([model.matvec(eye[:, k].reshape(n, 3)).reshape(-1) for k in range(3 * n)], 1).numpy()


@pytest.mark.parametrize("vectors", [0, 2])
def test_model_hessian_is_symmetric_positive_definite_on_the_free_coordinates_and_cg_solves_it(vectors: int) -> None:
    model, batch = random_model([5, 7], seed=0, vectors=vectors)
    n = 12
    p = dense(model, n)
    free = model.free.numpy().ravel() > 0
    np.testing.assert_allclose(p, p.T, atol=1e-12)
    assert np.linalg.eigvalsh(p[np.ix_(free, free)]).min() > 0
    assert np.abs(p[~free]).max() == 0.0  # a held coordinate is neither moved nor felt
    blocks = model.block_diagonal().numpy()
    for i in range(n):
        m = model.free[i].numpy() > 0
        np.testing.assert_allclose(blocks[i], np.where(np.outer(m, m), p[3 * i:3 * i + 3, 3 * i:3 * i + 3], np.diag(1.0 - m)))
    b = torch.as_tensor(np.random.default_rng(1).normal(size=(n, 3, 2)))  # two right-hand sides at once
    x = model.solve(b, batch, 2, iterations=200, rtol=1e-12).numpy()
    for r in range(2):
        want = np.zeros(3 * n)
        want[free] = np.linalg.solve(p[np.ix_(free, free)], b[..., r].numpy().ravel()[free])
        np.testing.assert_allclose(x[..., r].ravel(), want, atol=1e-10)


@pytest.mark.parametrize("vectors", [0, 3])
def test_model_hessian_step_is_textbook_preconditioned_lbfgs_per_structure(vectors: int) -> None:
    model, batch = random_model([6, 4], seed=2, with_free=False, vectors=vectors)
    parts = [quadratic_path(6, 4, seed=3), quadratic_path(4, 2, seed=4)]
    parts[1] = (parts[1][0], np.concatenate([parts[1][1], np.zeros((4, 12))], axis=1))  # two steps taken so far
    forces, history, batch, n_graphs = batch_of(parts)
    d = model_hessian_step(forces, history, model, batch, n_graphs, max_step=1e6, iterations=300).numpy()
    p = dense(model, 10)
    offset = 0
    for f, h in parts:
        m = len(f)
        sl = slice(3 * offset, 3 * (offset + m))
        # to the conjugate gradients' tolerance (1e-6 of the residual in float64)
        np.testing.assert_allclose(d[offset:offset + m], preconditioned_lbfgs_reference(f, h, np.linalg.inv(p[sl, sl])),
                                   rtol=1e-5, atol=1e-6)
        offset += m


def test_model_hessian_step_goes_downhill_is_bounded_and_moves_no_held_coordinate() -> None:
    model, batch = random_model([5, 7], seed=5)
    parts = [quadratic_path(5, 3, seed=6), quadratic_path(7, 3, seed=7)]
    forces, history, batch, n_graphs = batch_of(parts)
    forces, history = forces * model.free, history * model.free.repeat(1, 6)
    d = model_hessian_step(forces, history, model, batch, n_graphs, max_step=0.05, iterations=100)
    assert float(d.norm(dim=-1).max()) <= 0.05 + 1e-12
    assert (graph_dot(d, forces, batch, n_graphs) > 0).all()
    assert float((d * (1 - model.free)).abs().max()) == 0.0


def spring_network_hessian(positions: np.ndarray, pairs: list[tuple[int, int]], k: np.ndarray) -> np.ndarray:
    """Hessian (eV/Å²) of harmonic springs Σ k/2 (|r_ij| − r0_ij)² at rest (r0 = the current distances):
    each pair's block is −k r̂r̂ᵀ, a pure bond-stretch block."""
    n = len(positions)
    h = np.zeros((3 * n, 3 * n))
    for (i, j), kk in zip(pairs, k):
        r = positions[j] - positions[i]
        b = kk * np.outer(r, r) / (r @ r)
        for a, c, sign in ((i, i, 1), (j, j, 1), (i, j, -1), (j, i, -1)):
            h[3 * a:3 * a + 3, 3 * c:3 * c + 3] += sign * b
    return h


def test_fit_model_hessian_recovers_the_bond_blocks_of_a_spring_network() -> None:
    rng = np.random.default_rng(8)
    pos = rng.normal(size=(6, 3)) * 1.5
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    k = rng.uniform(1.0, 10.0, len(pairs))
    h = spring_network_hessian(pos, pairs, k)
    edges = [(j, i) for i, j in pairs] + [(i, j) for i, j in pairs]  # both directions (sender, receiver)
    ei = torch.tensor(edges).T
    vec = torch.as_tensor(pos[ei[0]] - pos[ei[1]])
    model = fit_model_hessian(torch.as_tensor(h), ei, vec, None, floor=0.3)
    np.testing.assert_allclose(model.alpha.numpy(), 0.0, atol=1e-10)
    np.testing.assert_allclose(model.beta.numpy(), np.concatenate([k, k]), rtol=1e-10)  # each direction carries half
    np.testing.assert_allclose(model.diag.numpy(), 0.3)  # springs leave no on-site stiffness: the floor
    np.testing.assert_allclose(dense(model, 6), h + 0.3 * np.eye(18), atol=1e-10)
