"""Action correction: the move the environment applies for a proposed displacement.

A pure function of the state and the proposal (numpy), shared by the environment, the
``RLOptimizer`` and the learner (the action-deviation penalty compares the actor's proposal
with what this correction makes of it):

1. every atom's proposed displacement longer than ``max_step`` Å is shortened to
   ``max_step`` (direction kept);
2. if the move would bring a pair (periodic images included) closer than
   ``min_distance_factor × (r_cov,i + r_cov,j)``, both atoms' moves are scaled back to the
   point where the pair touches that distance (analytic, per pair; repeated until no pair
   is violated, which terminates because scales only shrink and a fully taken-back pair
   is back at its valid starting distance).

When the cell relaxes too (a cell filter's rows, ``cell_rows=True``), a move has 3 more rows after
the atoms': each is capped at ``max_step`` like an atom's, and the collision test runs on the atom
rows in the frame the state gives (for a cell filter: the atom rows in the filter's starting cell,
where the cell change of one step, at most ``max_step / n_atoms`` in log strain, is not seen).

``a_back = 1 − ‖actual move‖ / ‖proposed move‖`` (Frobenius norms over all atoms, the
proposed move *before* the ``max_step`` cap), so an oversized action is penalised too.
``a_back`` is in [0, 1]; 0 means untouched. A non-finite action is applied as no move
with ``a_back = 1``.

Pairs come from a :class:`PairList` (a Verlet list built with ASE's neighbour list) or, on
the learner, from the edges of a batched graph (:func:`correct_on_pairs`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

from common.config import EnvConfig
from common.errors import RelaxRLError
from common.observation import CELL_ROWS

__all__ = ["ActionError", "PairList", "correct_action", "correct_on_pairs", "scale_back"]


class ActionError(RelaxRLError, ValueError):
    """An action of the wrong shape."""


# Relative tolerance on the max_step cap, so that a step that is exactly max_step long
# (BFGS scales its largest atom move to exactly maxstep) is not rescaled by rounding.
_CAP_RTOL = 1e-9
# Relative tolerance on squared pair distances when testing for a violation.
_DIST2_RTOL = 1e-9


class PairList:
    """Atom pairs (with periodic images) that may come within the collision distance.

    Built with ``cutoff = max collision distance + 2·max_step + skin`` at reference
    positions; valid while no atom has drifted more than ``skin / 2`` from them (a Verlet
    list), so one :func:`ase.neighborlist.neighbor_list` call serves many steps.
    """

    def __init__(self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                 max_step: float, min_distance_factor: float, skin: float = 1.0):
        self.ref_positions = np.array(positions, dtype=np.float64)  # [n_atoms, 3] Å
        self.skin = float(skin)
        radii = covalent_radii[numbers]  # [n_atoms] Å
        cutoff = 2.0 * min_distance_factor * float(radii.max()) + 2.0 * max_step + self.skin
        atoms = Atoms(numbers=numbers, positions=self.ref_positions, cell=cell, pbc=pbc)
        i, j, shifts = neighbor_list("ijS", atoms, cutoff)
        keep = i < j  # each pair once; self-images never change their distance
        self.i = i[keep]  # [n_pairs]
        self.j = j[keep]  # [n_pairs]
        self.offset = shifts[keep] @ np.asarray(cell, dtype=np.float64)  # [n_pairs, 3] Å, image shift of j
        self.dmin = min_distance_factor * (radii[self.i] + radii[self.j])  # [n_pairs] Å

    def valid_for(self, positions: np.ndarray) -> bool:
        """True while every atom is within skin/2 of the reference positions."""
        drift2 = np.einsum("ij,ij->i", positions - self.ref_positions, positions - self.ref_positions)
        return float(drift2.max(initial=0.0)) <= (0.5 * self.skin) ** 2

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """Pair vectors r_j + offset − r_i at ``positions``. # [n_pairs, 3] Å"""
        return positions[self.j] - positions[self.i] + self.offset


def _cap(displacement: np.ndarray, max_step: float) -> np.ndarray:
    """Shorten per-atom displacements longer than max_step Å, keeping direction."""
    norms = np.sqrt(np.einsum("ij,ij->i", displacement, displacement))  # [n_atoms] Å
    over = norms > max_step * (1.0 + _CAP_RTOL)
    if not over.any():
        return displacement
    capped = displacement.copy()
    capped[over] *= (max_step / norms[over])[:, None]
    return capped


def _first_contact(r0: np.ndarray, v: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Largest t in [0, 1] with |r0 + t·v| ≥ thr on the way, per pair (|r0| ≥ thr assumed).

    r0, v: [p, 3] Å; thr: [p] Å. Smallest root of |r0 + t v|² = thr².
    """
    a = np.einsum("ij,ij->i", v, v)
    b = 2.0 * np.einsum("ij,ij->i", r0, v)
    c = np.maximum(np.einsum("ij,ij->i", r0, r0) - thr * thr, 0.0)
    disc = np.maximum(b * b - 4.0 * a * c, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Numerically stable form of (−b − √disc) / 2a for b < 0 (approaching pairs).
        t = np.where(b < 0, 2.0 * c / (-b + np.sqrt(disc)), 0.0)
    return np.clip(np.nan_to_num(t, nan=0.0), 0.0, 1.0)


def correct_action(state: Any, displacement: np.ndarray, cfg: EnvConfig,
                   pairs: PairList | None = None, cell_rows: bool = False) -> tuple[np.ndarray, float]:
    """The move the environment applies for a proposed displacement, and ``a_back``.

    ``state`` is anything with ``positions``, ``numbers``, ``cell`` and ``pbc`` (an
    ``ase.Atoms`` or an :class:`Observation`); ``displacement`` is [n_atoms, 3] Å, or with
    ``cell_rows`` [n_atoms + 3, 3], the atom rows then the cell rows of a cell filter (module docstring).
    ``pairs`` is an optional :class:`PairList` valid for these positions (built here
    when omitted). Returns ``(actual_move, a_back in [0, 1])``, the move of the displacement's shape. Pure:
    the inputs are not modified. Non-finite displacements give no move and ``a_back = 1``.
    """
    positions = np.asarray(state.positions, dtype=np.float64)  # [n_atoms, 3] Å
    proposed = np.asarray(displacement, dtype=np.float64)  # [n_rows, 3]
    n = positions.shape[0]
    rows = (n + CELL_ROWS, 3) if cell_rows else positions.shape
    if proposed.shape != rows:
        what = "(n_atoms + 3 cell rows, 3)" if cell_rows else "(n_atoms, 3) in Å"
        raise ActionError(f"displacement has shape {proposed.shape}, expected {rows} {what}")
    if not np.isfinite(proposed).all():
        return np.zeros_like(proposed), 1.0
    proposed_norm = math.sqrt(float(np.einsum("ij,ij->", proposed, proposed)))
    if proposed_norm == 0.0:
        return np.zeros_like(proposed), 0.0

    move = _cap(proposed, cfg.max_step)  # every row, the cell's too
    if cfg.min_distance_factor > 0 and n > 1:
        if pairs is None:
            pairs = PairList(positions, np.asarray(state.numbers), np.asarray(state.cell),
                             np.asarray(state.pbc), cfg.max_step, cfg.min_distance_factor, skin=0.0)
        head = move[:n]
        atoms_move = _scale_back_collisions(positions, head, pairs)
        if atoms_move is not head:  # some pair was scaled back
            move = np.concatenate([atoms_move, move[n:]]) if cell_rows else atoms_move

    if move is proposed:
        return proposed.copy(), 0.0
    actual_norm = math.sqrt(float(np.einsum("ij,ij->", move, move)))
    a_back = min(max(1.0 - actual_norm / proposed_norm, 0.0), 1.0)
    return move, a_back


def _scale_back_collisions(positions: np.ndarray, move: np.ndarray, pairs: PairList) -> np.ndarray:
    """Scale the moves of atoms in pairs that would come too close (see module docstring)."""
    if len(pairs.i) == 0:
        return move
    return scale_back(move, pairs.i, pairs.j, pairs.vectors(positions), pairs.dmin)


def scale_back(move: np.ndarray, i: np.ndarray, j: np.ndarray, r0: np.ndarray, dmin: np.ndarray) -> np.ndarray:
    """``move`` [n, 3] Å with the moves of atoms in pairs (i, j) that would come closer than ``dmin`` [p] Å
    scaled back to first contact (module docstring); ``r0`` [p, 3] Å are the pair vectors r_j − r_i before the
    move. Returns ``move`` itself when no pair is violated."""
    if len(i) == 0:
        return move
    d0_2 = np.einsum("ij,ij->i", r0, r0)
    # A pair already inside the collision distance may not get any closer.
    thr = np.sqrt(np.minimum(dmin * dmin, d0_2))  # [p] Å
    thr2 = thr * thr * (1.0 - _DIST2_RTOL)
    n = len(move)
    scale = np.ones(n)  # [n_atoms] fraction of each atom's move kept
    for it in range(4 * n + 8):
        v = scale[j, None] * move[j] - scale[i, None] * move[i]  # [p, 3] relative move
        r1 = r0 + v
        bad = np.einsum("ij,ij->i", r1, r1) < thr2
        if not bad.any():
            break
        if it < 2 * n:
            t = _first_contact(r0[bad], v[bad], thr[bad])
        else:  # give up refining: freeze every atom still in a violated pair
            t = np.zeros(int(bad.sum()))
        new_scale = scale.copy()
        np.minimum.at(new_scale, i[bad], scale[i[bad]] * t)
        np.minimum.at(new_scale, j[bad], scale[j[bad]] * t)
        scale = new_scale
    if (scale == 1.0).all():
        return move
    return move * scale[:, None]


def correct_on_pairs(proposed: np.ndarray, i: np.ndarray, j: np.ndarray, r0: np.ndarray, numbers: np.ndarray,
                     cfg: EnvConfig) -> np.ndarray:
    """The corrected move of ``proposed`` [n_rows, 3] (cap, then collisions) for given candidate pairs.

    ``i``, ``j`` [p] index the atoms of each pair once (e.g. the edges of a batch of graphs with
    i < j; they must include every pair that may come within the collision distance), ``r0``
    [p, 3] Å their vectors r_j − r_i now. Atoms of different structures never share a pair, so
    one call corrects a whole batch. Rows after the ``len(numbers)`` atoms' (the cell rows of a batch
    whose cells relax) are capped only. Non-finite proposals give no move.
    """
    proposed = np.asarray(proposed, dtype=np.float64)
    if not np.isfinite(proposed).all():
        out = proposed.copy()
        out[~np.isfinite(proposed).all(axis=1)] = 0.0
        proposed = out
    move = _cap(proposed, cfg.max_step)
    n = len(numbers)
    if cfg.min_distance_factor > 0 and len(i):
        radii = covalent_radii[np.asarray(numbers)]
        atoms_move = scale_back(move[:n], i, j, r0, cfg.min_distance_factor * (radii[i] + radii[j]))
        move = atoms_move if len(move) == n else np.concatenate([atoms_move, move[n:]])
    return move
