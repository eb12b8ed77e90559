"""The messages of an interaction block summed at their receivers, edge chunk by edge chunk.

    agg = depthwise_messages(plan, tp, h, edge_index, sh, w, n_nodes)   # [N, tp.irreps_out]

is ``scatter_sum(tp(h[sender], sh, w), receiver, N)`` for the depthwise 'uvu' tensor product of
:class:`learner.blocks.InteractionBlock` (node features ⊗ spherical harmonics, one weight per edge
and channel), the same numbers without e3nn's general code path. Why: on a CPU learner that
product and its backward are most of an update (``bench/learner_update.py --profile``), and
they are bound by memory traffic over [n_edges, channels] arrays, not by arithmetic. e3nn
0.6's generated code also builds an outer product per path that nothing reads.

For lmax = 1 (node irreps ``U0x0e + U1x1o``, harmonics ``0e + 1o``) the four paths are, per edge
and channel u, with c the path's Clebsch–Gordan constant (e3nn's ``wigner_3j`` times its path
weight, read from the tensor product when the plan is made)::

    0e ⊗ 0e → 0e:  c·w0_u·s_u·Y0          0e ⊗ 1o → 1o:  c·w1_u·s_u·Y1
    1o ⊗ 0e → 1o:  c·w2_u·Y0·v_u          1o ⊗ 1o → 0e:  c·w3_u·(v_u · Y1)

computed on edge chunks of :data:`EDGE_CHUNK` edges (so every intermediate stays in the CPU's
cache), vectors held component-major ([E, 3, U], channels contiguous) and turned back into
e3nn's layout on the N nodes, with a hand-written backward pass of the same kind. The result
equals e3nn's to rounding (``tests/test_messages.py``). Any other irreps (lmax > 1), or
harmonics that carry a gradient (forces by autograd), take e3nn's own tensor product.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from torch.autograd.function import once_differentiable

__all__ = ["EDGE_CHUNK", "MessagePlan", "depthwise_messages", "message_plan"]

EDGE_CHUNK = 4096
"""Edges per chunk on a CPU, so that a chunk's messages ([4096, 8·16] float32, 2 MB) stay in a core's cache.
``bench/learner_update.py --baseline HEAD --edge-chunk N`` times another size against this one."""

_PATHS = ((0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0))  # (l1, l2, l_out) of the four lmax-1 paths, e3nn's order


@dataclass(frozen=True)
class MessagePlan:
    """What :func:`depthwise_messages` needs of an lmax-1 depthwise tensor product."""

    u0: int  # scalar channels of the node features (0e)
    u1: int  # vector channels of the node features (1o)
    consts: tuple[float, float, float, float]  # c of the paths 000, 011, 101, 110


def _delta_constant(c: torch.Tensor, key: tuple[int, int, int]) -> float | None:
    """c [d1, d2, d3] = const·δ over the two l = 1 indices (or a scalar for 000): the constant, else None."""
    if key == (0, 0, 0):
        return float(c.reshape(()))
    eye = torch.eye(3, dtype=c.dtype)
    plane = {(0, 1, 1): c[0], (1, 0, 1): c[:, 0, :], (1, 1, 0): c[:, :, 0]}[key]
    const = float(plane[0, 0])
    return const if torch.allclose(plane, const * eye, atol=1e-12) else None


def message_plan(tp: o3.TensorProduct) -> MessagePlan | None:
    """The plan for ``tp`` when it is the lmax-1 depthwise product :func:`learner.blocks._depthwise_tp` builds
    (node irreps ``U0x0e + U1x1o``, harmonics ``1x0e + 1x1o``, the four paths in e3nn's order, 'uvu' with one
    weight per edge and channel); None otherwise (e3nn's code path is used)."""
    in1, in2, out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
    if [ir for _, ir in in1] != [o3.Irrep("0e"), o3.Irrep("1o")] or in2 != o3.Irreps("1x0e + 1x1o"):
        return None
    u0, u1 = in1[0].mul, in1[1].mul
    if out != o3.Irreps([(u0, "0e"), (u0, "1o"), (u1, "1o"), (u1, "0e")]) or tp.shared_weights or tp.internal_weights:
        return None
    consts = []
    for k, (ins, key) in enumerate(zip(tp.instructions, _PATHS)):
        l1, l2, l3 = in1[ins.i_in1].ir.l, in2[ins.i_in2].ir.l, out[ins.i_out].ir.l
        if (l1, l2, l3) != key or ins.i_out != k or ins.connection_mode != "uvu" or not ins.has_weight:
            return None
        c = _delta_constant(o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * ins.path_weight, key)
        if c is None:
            return None
        consts.append(c)
    if len(tp.instructions) != len(_PATHS) or tp.weight_numel != 2 * (u0 + u1):
        return None
    return MessagePlan(u0, u1, tuple(consts))


def _chunks(n_edges: int, device: torch.device) -> list[tuple[int, int]]:
    """(first, end) of each edge chunk: :data:`EDGE_CHUNK` edges on a CPU, all at once on an accelerator (where
    kernels run in parallel and each launch costs)."""
    step = EDGE_CHUNK if device.type == "cpu" else max(n_edges, 1)
    return [(lo, min(n_edges, lo + step)) for lo in range(0, n_edges, step)]


class _Messages(torch.autograd.Function):
    """Σ over edges at the receivers of the four paths' messages, in the planar layout (module docstring).

    hp [N, U0 + 3·U1] node features (scalars, then vectors component-major), w [E, 2·(U0 + U1)] edge weights
    (paths 000, 011, 101, 110), y [E, 8] the harmonics times each path's constant and the edge's envelope
    (c·Y0, c·Y1, c·Y0, c·Y1) → [N, U0 + U1 + 3·U0 + 3·U1]: the 000 and 110 scalars, then the 011 and 101
    vectors component-major. Each chunk writes its messages into one buffer that stays in cache."""

    @staticmethod
    def forward(ctx, hp, w, y, sender, receiver, n_nodes: int, u0: int, u1: int):  # noqa: D102
        y000, y011, y101, y110 = y.split([1, 3, 1, 3], dim=1)
        cols = _columns(u0, u1)
        agg = hp.new_zeros((n_nodes, cols[-1]))
        chunks = _chunks(sender.shape[0], hp.device)
        buf = hp.new_empty((max((hi - lo for lo, hi in chunks), default=0), cols[-1]))
        for lo, hi in chunks:
            n = hi - lo
            s, v = hp.index_select(0, sender[lo:hi]).split([u0, 3 * u1], dim=1)  # [n, U0], [n, 3·U1]
            v = v.view(n, 3, u1)
            w0, w1, w2, w3 = w[lo:hi].split([u0, u0, u1, u1], dim=1)
            msg = buf[:n]
            torch.mul(w0 * s, y000[lo:hi], out=msg[:, cols[0]:cols[1]])
            torch.mul(w3, (v * y110[lo:hi].unsqueeze(2)).sum(1), out=msg[:, cols[1]:cols[2]])
            torch.mul((w1 * s).unsqueeze(1), y011[lo:hi].unsqueeze(2), out=msg[:, cols[2]:cols[3]].view(n, 3, u0))
            torch.mul((w2 * y101[lo:hi]).unsqueeze(1), v, out=msg[:, cols[3]:cols[4]].view(n, 3, u1))
            agg.index_add_(0, receiver[lo:hi], msg)
        ctx.save_for_backward(hp, w, y, sender, receiver)
        ctx.dims = (u0, u1)
        return agg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_agg):  # noqa: D102
        hp, w, y, sender, receiver = ctx.saved_tensors
        u0, u1 = ctx.dims
        y000, y011, y101, y110 = y.split([1, 3, 1, 3], dim=1)
        cols = _columns(u0, u1)
        grad_hp = torch.zeros_like(hp) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        chunks = _chunks(sender.shape[0], hp.device)
        buf = hp.new_empty((max((hi - lo for lo, hi in chunks), default=0), hp.shape[1]))
        for lo, hi in chunks:
            n = hi - lo
            s, v = hp.index_select(0, sender[lo:hi]).split([u0, 3 * u1], dim=1)
            v = v.view(n, 3, u1)
            w0, w1, w2, w3 = w[lo:hi].split([u0, u0, u1, u1], dim=1)
            g = grad_agg.index_select(0, receiver[lo:hi])
            g000, g110 = g[:, cols[0]:cols[1]], g[:, cols[1]:cols[2]]
            g011, g101 = g[:, cols[2]:cols[3]].view(n, 3, u0), g[:, cols[3]:cols[4]].view(n, 3, u1)
            y110c = y110[lo:hi].unsqueeze(2)  # [n, 3, 1]
            t011 = (g011 * y011[lo:hi].unsqueeze(2)).sum(1)  # [n, U0]  Σ_k g_k·c·Y1_k
            g000y = g000 * y000[lo:hi]
            if grad_w is not None:
                gw = grad_w[lo:hi]
                torch.mul(g000y, s, out=gw[:, :u0])
                torch.mul(t011, s, out=gw[:, u0:2 * u0])
                torch.mul((g101 * v).sum(1), y101[lo:hi], out=gw[:, 2 * u0:2 * u0 + u1])
                torch.mul(g110, (v * y110c).sum(1), out=gw[:, 2 * u0 + u1:])
            if grad_hp is not None:
                gh = buf[:n]
                torch.add(g000y * w0, t011 * w1, out=gh[:, :u0])
                torch.add(g101 * (w2 * y101[lo:hi]).unsqueeze(1), (g110 * w3).unsqueeze(1) * y110c,
                          out=gh[:, u0:].view(n, 3, u1))
                grad_hp.index_add_(0, sender[lo:hi], gh)
        return grad_hp, grad_w, None, None, None, None, None, None


def _columns(u0: int, u1: int) -> tuple[int, int, int, int, int]:
    """Column bounds of the planar messages: 000 scalars, 110 scalars, 011 vectors, 101 vectors."""
    return (0, u0, u0 + u1, u0 + u1 + 3 * u0, 4 * (u0 + u1))


def depthwise_messages(plan: MessagePlan | None, tp: o3.TensorProduct, h: torch.Tensor, edge_index: torch.Tensor,
                       sh: torch.Tensor, w: torch.Tensor, envelope: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Σ_{e: sender → i} tp(h[sender_e], sh_e, envelope_e·w_e) for every receiver i, [n_nodes, tp.irreps_out.dim].

    h [N, tp.irreps_in1] node features, sh [E, tp.irreps_in2] edge harmonics, w [E, tp.weight_numel] per-edge
    weights, envelope [E] the cutoff's factor (the product is linear in w and in sh, so the fast path puts it on
    the 8 numbers of sh·c instead of the weights); ``plan`` from :func:`message_plan` (None: e3nn's tensor
    product, then a scatter-sum)."""
    sender, receiver = edge_index[0], edge_index[1]
    if plan is None or sh.requires_grad or envelope.requires_grad:
        msg = tp(h.index_select(0, sender), sh, w * envelope.unsqueeze(-1))  # [E, irreps_out] (index_select: cheaper
        return msg.new_zeros((n_nodes, msg.shape[1])).index_add_(0, receiver, msg)  # backward than h[sender])
    u0, u1 = plan.u0, plan.u1
    c000, c011, c101, c110 = plan.consts
    n = h.shape[0]
    s, v = h.split([u0, 3 * u1], dim=1)
    hp = torch.cat([s, v.reshape(n, u1, 3).transpose(1, 2).reshape(n, 3 * u1)], dim=1)  # vectors component-major
    y0, y1 = (sh * envelope.unsqueeze(-1)).split([1, 3], dim=1)
    y = torch.cat([c000 * y0, c011 * y1, c101 * y0, c110 * y1], dim=1)  # [E, 8]
    agg = _Messages.apply(hp, w, y, sender, receiver, n_nodes, u0, u1)
    cols = _columns(u0, u1)

    def e3nn_layout(vec: torch.Tensor, mul: int) -> torch.Tensor:  # [N, 3·mul] component-major → [N, mul·3]
        return vec.reshape(n_nodes, 3, mul).transpose(1, 2).reshape(n_nodes, 3 * mul)

    return torch.cat([agg[:, :cols[1]], e3nn_layout(agg[:, cols[2]:cols[3]], u0), e3nn_layout(agg[:, cols[3]:], u1),
                      agg[:, cols[1]:cols[2]]], dim=1)  # e3nn's irreps_out order: 000, 011, 101, 110
