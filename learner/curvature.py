"""The curvature loss: how far the 'model-hessian' head's model Hessian is from the Hessian columns the expert
actors measured (``expert.curvature_probes``), as pure functions of tensors.

A probe is one atom a of one structure and the Hessian's column of it, H[j, a] for every atom j of the
structure (3×3 blocks, eV/Å²). The model Hessian P (:class:`~learner.quasi_newton.ModelHessian`) has the
column P[j, a] = −½·Σ B_e over the edges e between j and a (periodic images included), and the diagonal
block P[a, a] = d_a·I + ½·Σ B_e over the edges at a. Per probe::

    off  = Σ_{j≠a} |P[j, a] − sym(H[j, a])|² / Σ_{j≠a} |sym(H[j, a])|²     (atoms that are not neighbours: P = 0)
    diag = |P[a, a] − H[a, a]|² / |H[a, a]|²
    L    = mean over probes of (off + DIAG_WEIGHT · diag)

over the coordinates no constraint holds. The off-diagonal blocks are the coupling a per-atom preconditioner
cannot see and carry the weight; the diagonal is nudged so the stiffness the edges leave over is the atom's own
(the edges' share of the diagonal block is held fixed there, so the diagonal error never shrinks the edges: at
the start d_a = 1/step_size is far above any H[a, a]).
Measured offline on the quality preset's training structures, fitting these blocks (and not Hessian-vector
products in random directions, which the stiffest modes dominate) is what turns the model Hessian into a good
preconditioner (docs/RESULTS.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from learner.quasi_newton import ModelHessian

__all__ = ["DIAG_WEIGHT", "CurvatureTargets", "curvature_loss", "curvature_targets"]

DIAG_WEIGHT = 0.1
"""Weight of the diagonal block's error next to the off-diagonal blocks' in :func:`curvature_loss`."""


@dataclass
class CurvatureTargets:
    """The probes of a batch: K probed atoms, and R = Σ_p (atoms of probe p's structure) target rows."""

    atoms: Tensor  # [K] int64, batch-global index of each probed atom
    first: Tensor  # [K] int64, batch-global index of the first atom of each probe's structure
    row_start: Tensor  # [K] int64, index of each probe's first row in ``blocks``
    row_probe: Tensor  # [R] int64, the probe of each row
    row_atom: Tensor  # [R] int64, batch-global atom index of each row
    blocks: Tensor  # [R, 3, 3] eV/Å², H[row atom, probed atom]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> CurvatureTargets:
        return CurvatureTargets(*(t.to(device=device, dtype=dtype if t.is_floating_point() else None)
                                  for t in (self.atoms, self.first, self.row_start, self.row_probe, self.row_atom,
                                            self.blocks)))


def curvature_targets(probes: Sequence[tuple[np.ndarray, np.ndarray] | None], n_atoms: Sequence[int]
                      ) -> CurvatureTargets | None:
    """The targets of a batch from each item's (probe_atoms [k], probe_columns [k, n, 3, 3]) or None, in batch
    order, with each item's atom count; None when no item carries a probe."""
    atoms, first, row_probe, row_atom, blocks, row_start = [], [], [], [], [], []
    offset = rows = k = 0
    for probe, n in zip(probes, n_atoms):
        if probe is not None:
            idx, cols = probe
            for p, a in enumerate(np.asarray(idx, dtype=np.int64)):
                atoms.append(offset + int(a))
                first.append(offset)
                row_start.append(rows)
                row_probe.append(np.full(n, k, dtype=np.int64))
                row_atom.append(offset + np.arange(n, dtype=np.int64))
                blocks.append(np.asarray(cols[p], dtype=np.float64))
                rows += n
                k += 1
        offset += n
    if not atoms:
        return None
    return CurvatureTargets(torch.as_tensor(atoms), torch.as_tensor(first), torch.as_tensor(row_start),
                            torch.from_numpy(np.concatenate(row_probe)), torch.from_numpy(np.concatenate(row_atom)),
                            torch.from_numpy(np.concatenate(blocks)))


def curvature_loss(model: ModelHessian, t: CurvatureTargets, diag_weight: float = DIAG_WEIGHT) -> Tensor:
    """The loss of the module docstring, a scalar (mean over the probes)."""
    n_atoms = model.diag.shape[0]
    k = t.atoms.shape[0]
    probe_of = torch.full((n_atoms,), -1, dtype=torch.int64, device=t.atoms.device)
    probe_of[t.atoms] = torch.arange(k, device=t.atoms.device)
    b = model.half_edge_blocks()  # [E, 3, 3]: each directed edge's half of its block
    snd, rcv = model.edge_index[0], model.edge_index[1]
    keep = snd != rcv  # an atom's own periodic image couples it to nothing
    pred = b.new_zeros(t.blocks.shape)  # [R, 3, 3]
    for probed, other in ((snd, rcv), (rcv, snd)):
        p = probe_of[probed]
        hit = keep & (p >= 0)
        row = t.row_start[p[hit]] + (other[hit] - t.first[p[hit]])
        pred = pred.index_add(0, row, -b[hit])
    diag_rows = t.row_start + (t.atoms - t.first)  # [K]
    # the diagonal block d_a·I + ½ΣB_e, with the edges' share held fixed: the edges learn from the off-diagonal
    # blocks alone, d_a from what they leave over (as fit_model_hessian splits them)
    pred = pred.index_add(0, diag_rows, model.detached_edges().block_diagonal()[t.atoms])
    target = t.blocks.to(pred.dtype)
    is_diag = torch.zeros(target.shape[0], dtype=torch.bool, device=target.device)
    is_diag[diag_rows] = True
    target = torch.where(is_diag[:, None, None], target, 0.5 * (target + target.transpose(-1, -2)))
    weight = torch.ones_like(target)
    if model.free is not None:  # coordinates held by a constraint neither move nor count
        weight = model.free[t.row_atom][:, :, None] * model.free[t.atoms][t.row_probe][:, None, :]
    err = ((pred - target) ** 2 * weight).sum((1, 2))  # [R]
    size = (target ** 2 * weight).sum((1, 2))  # [R]
    off = ~is_diag

    def per_probe(v: Tensor, rows: Tensor) -> Tensor:
        return v.new_zeros(k).index_add(0, t.row_probe[rows], v[rows])

    rows_off, rows_diag = torch.nonzero(off).squeeze(-1), diag_rows
    loss_off = per_probe(err, rows_off) / (per_probe(size, rows_off) + 1e-6)
    loss_diag = err[rows_diag] / (size[rows_diag] + 1e-6)
    return (loss_off + diag_weight * loss_diag).mean()
