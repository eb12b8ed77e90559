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
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = [
    "CURVATURE_EPS",
    "ModelHessian",
    "bounded_move",
    "fit_model_hessian",
    "model_hessian_step",
    "pair_block_targets",
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
                      n_graphs: int, max_step: float, n_atoms: int | None = None) -> torch.Tensor:
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
    return bounded_move(d, batch, n_graphs, max_step, n_atoms)


# ----------------------------------------------------------------------------- a sparse model Hessian


def bounded_move(d: torch.Tensor, batch: torch.Tensor, n_graphs: int, max_step: float,
                 n_atoms: int | None = None) -> torch.Tensor:
    """``d`` [n_rows, 3] scaled as a whole per graph so that its longest row is at most ``max_step`` Å.

    With ``n_atoms`` < n_rows the rows after the first ``n_atoms`` are cell rows, 3 per graph (a cell filter's
    3×3 block): their length is the block's largest singular value, which a rotation of the structure
    (X → R X Rᵀ) leaves as it is, so the bound, like the move, turns with the structure."""
    length = torch.sqrt((d * d).sum(-1) + 1e-12)  # [n_rows] Å, with a finite gradient at d = 0
    if n_atoms is not None and d.shape[0] > n_atoms:
        cell = torch.linalg.matrix_norm(d[n_atoms:].reshape(n_graphs, 3, 3), ord=2)  # [G]
        length = torch.cat([length[:n_atoms], cell.repeat_interleave(3)])
    longest = graph_max(length, batch, n_graphs)  # [G] Å
    bound = torch.clamp(max_step / longest.clamp_min(1e-12), max=1.0)  # [G]
    return d * bound[batch].unsqueeze(-1)


def _rows_dot(a: torch.Tensor, b: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph inner products of row vectors with R right-hand sides: [N, 3, R] · [N, 3, R] → [G, R]."""
    return a.new_zeros((n_graphs, a.shape[-1])).index_add_(0, batch, (a * b).sum(1))


@dataclass
class ModelHessian:
    """A sparse, symmetric positive-definite model of the Hessian over the rows of a batch (eV/Å²)::

        P = Σ_i d_i·(e_i e_iᵀ ⊗ I₃) + Σ_e ½·(e_r − e_s)(e_r − e_s)ᵀ ⊗ B_e,    B_e = α_e·I₃ + β_e·r̂_e r̂_eᵀ [+ Σ_k u_ek u_ekᵀ]

    over the rows i (the atoms, then any cell rows) and the directed edges e = (s → r) of the
    neighbour graph (atom rows only). With d_i > 0 and α_e, β_e ≥ 0 every term is positive
    semi-definite and the diagonal makes P positive definite. The edge blocks have the form of a
    pair potential's Hessian block (a bond-stretch term along r̂ and a transverse term), and
    P·1 = d (translations cost only the diagonal), as in ASE's ``Exp`` preconditioner (Packwood et
    al., JCP 144, 164109, 2016), of which P is a learned generalisation. An edge and its reverse
    each carry half, so an edge present in one direction only (a neighbour cap) still gives a
    symmetric P.

    ``free`` [N, 3] (1 free, 0 held by a constraint) restricts P to the free coordinates: a held
    coordinate is neither moved nor felt, so the solve is the one on the free subspace.

    ``vectors`` [E, K, 3] (optional) add K rank-one terms u uᵀ to each edge's block: any symmetric positive
    semi-definite 3×3 block is αI + Σ u uᵀ with K = 3, so the blocks are no longer held to a pair potential's form.
    """

    diag: torch.Tensor  # [N] eV/Å², > 0
    edge_index: torch.Tensor  # [2, E] int64 (sender, receiver), row indices
    alpha: torch.Tensor  # [E] eV/Å², ≥ 0
    beta: torch.Tensor  # [E] eV/Å², ≥ 0
    direction: torch.Tensor  # [E, 3] unit vectors along the edges
    free: torch.Tensor | None = None  # [N, 3] 1.0 free, 0.0 fixed; None: every coordinate free
    vectors: torch.Tensor | None = None  # [E, K, 3] (eV/Å²)^½: rank-one terms of the edge blocks; None: none

    def _mask(self, v: torch.Tensor) -> torch.Tensor:
        if self.free is None:
            return v
        return v * (self.free.unsqueeze(-1) if v.dim() == 3 else self.free)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """P·v for row vectors [N, 3] or [N, 3, R] (R right-hand sides at once), restricted to the free coordinates."""
        squeeze = v.dim() == 2
        x = self._mask(v.unsqueeze(-1) if squeeze else v)  # [N, 3, R]
        snd, rcv = self.edge_index[0], self.edge_index[1]
        dv = x[rcv] - x[snd]  # [E, 3, R]
        along = (self.direction.unsqueeze(-1) * dv).sum(1, keepdim=True)  # [E, 1, R]
        m = 0.5 * (self.alpha[:, None, None] * dv + self.beta[:, None, None] * along * self.direction.unsqueeze(-1))
        if self.vectors is not None:
            m = m + 0.5 * torch.einsum("eki,ekr->eir", self.vectors, torch.einsum("eki,eir->ekr", self.vectors, dv))
        out = self.diag[:, None, None] * x
        out = out.index_add(0, rcv, m).index_add(0, snd, -m)
        out = self._mask(out)
        return out.squeeze(-1) if squeeze else out

    def half_edge_blocks(self) -> torch.Tensor:
        """½·B_e of every directed edge (each direction carries half of the pair's block), [E, 3, 3]."""
        eye = torch.eye(3, dtype=self.diag.dtype, device=self.diag.device)
        b = self.alpha[:, None, None] * eye + self.beta[:, None, None] * self.direction[:, :, None] * self.direction[:, None, :]
        if self.vectors is not None:
            b = b + torch.einsum("eki,ekj->eij", self.vectors, self.vectors)
        return 0.5 * b

    def detached_edges(self) -> ModelHessian:
        """The same P with the edge blocks cut from the autograd graph (the diagonal still trains)."""
        return replace(self, alpha=self.alpha.detach(), beta=self.beta.detach(),
                                   vectors=None if self.vectors is None else self.vectors.detach())

    def block_diagonal(self) -> torch.Tensor:
        """The 3×3 diagonal blocks of P on the free coordinates (identity on the held ones), [N, 3, 3]."""
        eye = torch.eye(3, dtype=self.diag.dtype, device=self.diag.device)
        b = self.half_edge_blocks()  # [E, 3, 3]
        snd, rcv = self.edge_index[0], self.edge_index[1]
        self_image = snd == rcv  # an atom's own periodic image: v_r − v_s = 0, no diagonal term
        b = b * (~self_image).to(b.dtype)[:, None, None]
        blocks = self.diag[:, None, None] * eye
        blocks = blocks.index_add(0, rcv, b).index_add(0, snd, b)
        if self.free is not None:
            m = self.free
            blocks = blocks * (m[:, :, None] * m[:, None, :]) + torch.diag_embed(1.0 - m)
        return blocks

    def solve(self, b: torch.Tensor, batch: torch.Tensor, n_graphs: int, iterations: int,
              rtol: float | None = None) -> torch.Tensor:
        """P⁻¹·b by conjugate gradients preconditioned with the inverse diagonal blocks (block Jacobi), per graph,
        for b [N, 3] or [N, 3, R]; at most ``iterations`` iterations. A graph's right-hand side stops changing once
        its preconditioned residual is below ``rtol`` of its start (default: 1e-6 in float64, 1e-3 in float32, what
        the dtype resolves), and the loop ends when every one has. Differentiable (the iterations are unrolled; a
        finished right-hand side takes no further step, so no gradient divides by a vanishing residual). Held
        coordinates of the result are 0."""
        if rtol is None:
            rtol = 1e-6 if b.dtype == torch.float64 else 1e-3
        squeeze = b.dim() == 2
        rhs = self._mask(b.unsqueeze(-1) if squeeze else b)  # [N, 3, R]
        inv_blocks = torch.linalg.inv(self.block_diagonal())  # [N, 3, 3]

        def precondition(r: torch.Tensor) -> torch.Tensor:
            return self._mask(torch.einsum("nij,njr->nir", inv_blocks, r))

        x = torch.zeros_like(rhs)
        r = rhs
        z = precondition(r)
        p = z
        rz = _rows_dot(r, z, batch, n_graphs)  # [G, R]
        floor = (rtol * rtol) * rz.detach().abs()  # [G, R]
        for _ in range(iterations):
            active = rz.detach() > floor  # [G, R]: right-hand sides still converging (rz > 0 there)
            if not bool(active.any()):
                break
            ap = self.matvec(p)
            pap = _rows_dot(p, ap, batch, n_graphs)
            go = active & (pap.detach() > 0)
            step = torch.where(go, rz / torch.where(go, pap, torch.ones_like(pap)), torch.zeros_like(pap))  # [G, R]
            x = x + step[batch].unsqueeze(1) * p
            r = r - step[batch].unsqueeze(1) * ap
            z = precondition(r)
            rz_new = _rows_dot(r, z, batch, n_graphs)
            beta = torch.where(go, rz_new / torch.where(go, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            p = torch.where(go[batch].unsqueeze(1), z + beta[batch].unsqueeze(1) * p, p)
            rz = torch.where(go, rz_new, rz)
        return x.squeeze(-1) if squeeze else x


def model_hessian_step(forces: torch.Tensor, history: torch.Tensor, hessian: ModelHessian, batch: torch.Tensor,
                       n_graphs: int, max_step: float, iterations: int, n_atoms: int | None = None) -> torch.Tensor:
    """The preconditioned L-BFGS move on a sparse model Hessian P (:class:`ModelHessian`). [N, 3] Å

    The two-loop recursion (:func:`lbfgs_direction`) over the path history runs on the initial
    inverse Hessian ``H0 = s·P⁻¹``: s = 1 before the path has a pair that passes
    :func:`positive_curvature` (P's own scale), afterwards s = s·y / (y·P⁻¹y) of the newest such pair
    (Nocedal's scaling in P's metric: the path sets the overall scale, P how it is shared among
    atoms, directions and their couplings). P⁻¹ is applied by :meth:`ModelHessian.solve`, the
    newest pair's y in the same solve. The move is then bounded as a whole by ``max_step`` Å.
    """
    pairs = history_pairs(history)
    newest = torch.zeros_like(forces)  # [N, 3] y of the newest valid pair, per graph
    found = torch.zeros(n_graphs, dtype=torch.bool, device=forces.device)
    sy_newest = forces.new_zeros(n_graphs)
    for s, y in reversed(pairs):  # oldest first, so the newest valid pair wins
        sy, ss, yy = _pair_products(s, y, batch, n_graphs)
        ok = positive_curvature(sy, ss, yy)
        newest = torch.where(ok[batch].unsqueeze(-1), y, newest)
        sy_newest = torch.where(ok, sy, sy_newest)
        found = found | ok

    def h0(q: torch.Tensor) -> torch.Tensor:
        both = hessian.solve(torch.stack([q, newest], -1), batch, n_graphs, iterations)  # [N, 3, 2]
        z, p_y = both[..., 0], both[..., 1]
        y_py = graph_dot(newest, p_y, batch, n_graphs)  # [G]
        ok = found & (y_py > 0)
        scale = torch.where(ok, sy_newest / torch.where(ok, y_py, torch.ones_like(y_py)), torch.ones_like(y_py))
        return scale[batch].unsqueeze(-1) * z

    d = lbfgs_direction(forces, history, batch, n_graphs, h0)  # [N, 3] Å
    if hessian.free is not None:
        d = d * hessian.free
    return bounded_move(d, batch, n_graphs, max_step, n_atoms)


def pair_block_targets(hessian: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3×3 blocks of a full Hessian [3n, 3n] (eV/Å²), [n, n, 3, 3] with blocks[i, j] = ∂²E/∂x_i∂x_j, and what each
    directed edge (s → r) of ``edge_index`` [2, E] should carry of them: the symmetric part of −H_rs, shared equally
    among the periodic images of the same pair of atoms (whose blocks H_rs sums), [E, 3, 3]."""
    n = hessian.shape[0] // 3
    blocks = hessian.reshape(n, 3, n, 3).permute(0, 2, 1, 3)
    snd, rcv = edge_index[0], edge_index[1]
    pair = rcv * n + snd
    images = torch.zeros(n * n, dtype=hessian.dtype, device=hessian.device).index_add_(
        0, pair, torch.ones_like(pair, dtype=hessian.dtype))[pair]  # [E] edges between the same two atoms
    target = -blocks[rcv, snd] / images[:, None, None]
    return blocks, 0.5 * (target + target.transpose(-1, -2))


def _joint_image_fit(target: torch.Tensor, r: torch.Tensor, edge_index: torch.Tensor, n: int, alpha: torch.Tensor,
                     beta: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """α, β ≥ 0 of the edges that are periodic images of the same directed pair (s → r), fitted together:
    Σ_images (α_e I + β_e r̂_e r̂_eᵀ) closest to the pair's whole symmetric −H_rs (non-negative least squares, a
    ``ridge`` on the coefficients so that equal columns share equally). Each image fitted alone to an equal share
    (the closed form) cannot add its directions up to the pair's block: in small periodic cells that left a
    quarter to a third of the off-diagonal blocks unfitted. Edges with no other image keep their ``alpha``, ``beta``."""
    from scipy.optimize import nnls  # 0.35 s to import, needed by the teacher's fit only (not the learner, not a policy)

    snd, rcv = edge_index[0], edge_index[1]
    _, group, counts = torch.unique(rcv * n + snd, return_inverse=True, return_counts=True)
    alpha, beta = alpha.clone(), beta.clone()
    eye = np.eye(3).reshape(-1)
    rr = (r[:, :, None] * r[:, None, :]).reshape(-1, 9).cpu().numpy()
    share = target.reshape(-1, 9).cpu().numpy()
    for g in torch.nonzero(counts > 1).squeeze(-1).tolist():
        edges = torch.nonzero(group == g).squeeze(-1)
        if int(snd[edges[0]]) == int(rcv[edges[0]]):  # an atom's own images couple it to nothing
            continue
        e = edges.cpu().numpy()
        k = len(e)
        a = np.concatenate([np.repeat(eye[:, None], k, 1), rr[e].T], 1)  # [9, 2k]: columns α_1..α_k, β_1..β_k
        a = np.concatenate([a, np.sqrt(ridge) * np.eye(2 * k)], 0)
        b = np.concatenate([share[e[0]] * k, np.zeros(2 * k)])
        x, _ = nnls(a, b)
        alpha[edges] = torch.as_tensor(x[:k], dtype=alpha.dtype)
        beta[edges] = torch.as_tensor(x[k:], dtype=beta.dtype)
    return alpha, beta


def fit_model_hessian(hessian: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, free: torch.Tensor | None,
                      floor: float, joint_images: bool = True) -> ModelHessian:
    """The :class:`ModelHessian` closest to a full Hessian [3n, 3n] (eV/Å²) on the given edges: each edge's block
    B = αI + βr̂r̂ᵀ is the least-squares fit to the symmetric part of −H_rs (α, β clipped at 0), the periodic images
    of the same pair of atoms (whose blocks H_rs sums) fitted together (:func:`_joint_image_fit`; with
    ``joint_images=False`` each image alone to an equal share, as before 2026-12-06), and d_i is the
    mean of the diagonal block H_ii left over after the edges' share, at least ``floor``. What the
    'model-hessian' head would predict with a perfect network; the teacher of that name moves with it."""
    n = hessian.shape[0] // 3
    blocks, target = pair_block_targets(hessian, edge_index)
    snd, rcv = edge_index[0], edge_index[1]
    r = vectors / torch.sqrt((vectors * vectors).sum(-1, keepdim=True)).clamp_min(1e-12)  # [E, 3]
    trace = torch.diagonal(target, dim1=-2, dim2=-1).sum(-1)  # [E]
    along = torch.einsum("ei,eij,ej->e", r, target, r)  # [E]
    # normal equations of min |αI + βrrᵀ − T|²: [[3, 1], [1, 1]]·[α, β] = [tr T, r·T·r]
    alpha = (0.5 * (trace - along)).clamp_min(0.0)
    beta = (along - alpha).clamp_min(0.0)
    if joint_images:
        alpha, beta = _joint_image_fit(target, r, edge_index, n, alpha, beta)
    self_image = snd == rcv
    alpha = torch.where(self_image, torch.zeros_like(alpha), alpha)
    beta = torch.where(self_image, torch.zeros_like(beta), beta)
    zero = ModelHessian(diag=hessian.new_zeros(n), edge_index=edge_index, alpha=alpha, beta=beta, direction=r)
    left = torch.diagonal(blocks[torch.arange(n), torch.arange(n)] - zero.block_diagonal(), dim1=-2, dim2=-1)
    diag = (left.sum(-1) / 3.0).clamp_min(floor)  # [n]
    return ModelHessian(diag=diag, edge_index=edge_index, alpha=alpha, beta=beta, direction=r, free=free)
