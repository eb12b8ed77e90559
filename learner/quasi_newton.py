"""Quasi-Newton maths on plain tensors: the L-BFGS two-loop recursion, the secant scale and the
bounded quasi-Newton move on a per-atom compliance.

Every function takes the per-atom tensors of a batch of structures and the per-atom graph
index, never a :class:`~learner.graph.Graph` or a neighbour list::

    forces   [N, 3]    eV/Å, the atoms of all structures concatenated
    history  [N, 6 K]  the path history, newest first: s_k = columns 6k:6k+3 (the move, Å),
                       y_k = −(columns 6k+3:6k+6) (the gradient change, eV/Å)
    batch    [N]       int64, the structure each atom belongs to, in 0..n_graphs−1
    n_graphs           the number of structures

Sums over a structure run over all its atoms and all three directions, so each structure is
one 3n-dimensional problem. A remembered pair (s, y) enters the inverse-Hessian estimate only
when it passes :func:`positive_curvature`, the one curvature test of this module: the two-loop
recursion skips the other pairs and the secant scale is that of the newest pair that passes.

The quasi-Newton actor head (:class:`~learner.heads.QuasiNewtonActor`, the compliance from the
network) and the exact-compliance teacher (:class:`~actors.expert.ExactComplianceTeacher`, the
compliance from finite-difference Hessian blocks) both move by :func:`quasi_newton_step`. The
initial inverse Hessian of :func:`lbfgs_direction` is any function ``h0(v)`` of per-atom vectors
[N, 3] → [N, 3], so another preconditioner plugs in without changing the recursion.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "CURVATURE_EPS",
    "graph_dot",
    "graph_max",
    "graph_sum",
    "history_pairs",
    "lbfgs_direction",
    "positive_curvature",
    "quasi_newton_step",
    "secant_scale",
]

CURVATURE_EPS = 1e-8
"""Relative curvature a remembered pair needs: s·y > CURVATURE_EPS·|s||y| (see :func:`positive_curvature`)."""

InverseHessian = Callable[[torch.Tensor], torch.Tensor]
"""The initial inverse Hessian as a function of per-atom vectors, [N, 3] → [N, 3] (Å²/eV times eV/Å → Å)."""


def graph_sum(v: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph sum of per-atom values [N] → [n_graphs]."""
    return v.new_zeros(n_graphs).index_add_(0, batch, v)


def graph_dot(a: torch.Tensor, b: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph inner product Σ_i a_i·b_i of per-atom vectors [N, 3] → [n_graphs]."""
    return graph_sum((a * b).sum(-1), batch, n_graphs)


def graph_max(v: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph maximum of per-atom values [N] → [n_graphs] (0 for an empty graph)."""
    return v.new_zeros(n_graphs).scatter_reduce(0, batch, v, reduce="amax", include_self=True)


def positive_curvature(sy: torch.Tensor, ss: torch.Tensor, yy: torch.Tensor, eps: float = CURVATURE_EPS) -> torch.Tensor:
    """Whether a pair (s, y) has positive curvature along s, from its inner products s·y, s·s, y·y.

    True where ``s·y > eps·|s||y|`` and ``s ≠ 0``: the pair's curvature s·y / s·s is positive and
    not lost in rounding, so its BFGS update keeps the inverse-Hessian estimate positive definite.
    A pair that passes has y ≠ 0 too, so the secant scale s·y / y·y is finite and positive. [bool]
    """
    return (sy > eps * torch.sqrt(ss * yy)) & (ss > 0)


def history_pairs(history: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The remembered pairs (s_k, y_k) of a path history [N, 6 K], newest first; each [N, 3]."""
    return [(history[:, 6 * k:6 * k + 3], -history[:, 6 * k + 3:6 * k + 6]) for k in range(history.shape[1] // 6)]


def _pair_products(s: torch.Tensor, y: torch.Tensor, batch: torch.Tensor, n_graphs: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s·y, s·s, y·y) per graph, each [n_graphs]."""
    return graph_dot(s, y, batch, n_graphs), graph_dot(s, s, batch, n_graphs), graph_dot(y, y, batch, n_graphs)


def lbfgs_direction(forces: torch.Tensor, history: torch.Tensor, batch: torch.Tensor, n_graphs: int, h0: InverseHessian,
                    curvature_eps: float = CURVATURE_EPS) -> torch.Tensor:
    """L-BFGS two-loop recursion (Nocedal 1980) per graph: H·F for the inverse-Hessian estimate H
    of the remembered steps on top of ``h0``. [N, 3] Å

    Pairs that fail :func:`positive_curvature` are left out (ρ_k = 0), so H stays positive
    definite and F·(H F) > 0 when ``h0`` is positive definite: the direction goes downhill.
    """
    pairs = history_pairs(history)
    rho = []
    for s, y in pairs:
        sy, ss, yy = _pair_products(s, y, batch, n_graphs)  # [G]
        ok = positive_curvature(sy, ss, yy, curvature_eps)
        rho.append(torch.where(ok, 1.0 / torch.where(ok, sy, torch.ones_like(sy)), torch.zeros_like(sy)))
    q = forces
    alpha = []
    for (s, y), r in zip(pairs, rho):  # newest first
        a = r * graph_dot(s, q, batch, n_graphs)  # [G]
        alpha.append(a)
        q = q - a[batch].unsqueeze(-1) * y
    z = h0(q)
    for (s, y), r, a in reversed(list(zip(pairs, rho, alpha))):  # oldest first
        b = r * graph_dot(y, z, batch, n_graphs)
        z = z + (a - b)[batch].unsqueeze(-1) * s
    return z


def secant_scale(history: torch.Tensor, batch: torch.Tensor, n_graphs: int, curvature_eps: float = CURVATURE_EPS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """γ = s·y / y·y of the newest remembered pair that passes :func:`positive_curvature`, per graph
    (Å²/eV; Nocedal & Wright eq. 7.20), and whether such a pair exists. ([n_graphs], [n_graphs] bool)"""
    gamma = history.new_zeros(n_graphs)
    found = torch.zeros(n_graphs, dtype=torch.bool, device=history.device)
    for s, y in reversed(history_pairs(history)):  # oldest first, so the newest valid pair wins
        sy, ss, yy = _pair_products(s, y, batch, n_graphs)
        ok = positive_curvature(sy, ss, yy, curvature_eps)
        gamma = torch.where(ok, sy / torch.where(ok, yy, torch.ones_like(yy)), gamma)
        found = found | ok
    return gamma, found


def quasi_newton_step(forces: torch.Tensor, history: torch.Tensor, compliance: torch.Tensor, batch: torch.Tensor,
                      n_graphs: int, max_step: float) -> torch.Tensor:
    """The quasi-Newton move of every graph for a per-atom compliance ``C_i`` [N, 3, 3] (Å²/eV, SPD). [N, 3] Å

    The initial inverse Hessian of the L-BFGS recursion (:func:`lbfgs_direction`) over the path
    history is ``H0_i = s·C_i``: before the first remembered pair with positive curvature s = 1
    (the compliance as it is), afterwards s = γ / c̄ with γ the secant scale of the newest such pair
    (:func:`secant_scale`) and c̄ = Σ_i |F_i|²·tr(C_i)/3 / Σ_i |F_i|² the compliance where the
    forces are (the mean of tr(C_i)/3 when all forces vanish): the path sets the overall scale,
    the compliance how it is shared among the atoms and directions. The move is then scaled as a
    whole so that the longest atom move is at most ``max_step`` Å.
    """
    gamma, found = secant_scale(history, batch, n_graphs)  # [G]
    f2 = (forces * forces).sum(-1)  # [N]
    trace = torch.diagonal(compliance, dim1=-2, dim2=-1).sum(-1) / 3.0  # [N] Å²/eV
    w = graph_sum(f2, batch, n_graphs)  # [G]
    c_forces = graph_sum(f2 * trace, batch, n_graphs) / w.clamp_min(1e-30)
    counts = graph_sum(torch.ones_like(trace), batch, n_graphs).clamp_min(1.0)  # [G] (index_add: any device, meta too)
    c_mean = graph_sum(trace, batch, n_graphs) / counts
    c_bar = torch.where(w > 0, c_forces, c_mean).clamp_min(1e-30)  # [G]
    scale = torch.where(found, gamma / c_bar, torch.ones_like(gamma))[batch]  # [N]

    def h0(v: torch.Tensor) -> torch.Tensor:
        return scale.unsqueeze(-1) * torch.einsum("nij,nj->ni", compliance, v)

    d = lbfgs_direction(forces, history, batch, n_graphs, h0)  # [N, 3] Å
    length = torch.sqrt((d * d).sum(-1) + 1e-12)  # [N] Å, with a finite gradient at d = 0
    longest = graph_max(length, batch, n_graphs)  # [G] Å
    bound = torch.clamp(max_step / longest.clamp_min(1e-12), max=1.0)  # [G]
    return d * bound[batch].unsqueeze(-1)
