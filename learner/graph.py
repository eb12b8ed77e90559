"""Observations → batched graph tensors (neighbour lists, periodic shifts, graph index).

    graph = batch_graphs([obs1, obs2], cfg, env_input_dim=0)   # learner.graph.Graph
    graph = graph.to("cuda")

Atom order of a batch is the concatenation of the observations' atoms in list order, so a
list of per-observation arrays ``[n_i, 3]`` lines up with the graph by ``np.concatenate``.

Edges follow ``Observation.edge_index``: row 0 is the *sender* j, row 1 the *receiver* i,
and ``edge_shift`` [n_edges, 3] holds the integer cell shift S of the sender, so the edge
vector (receiver → sender image) is ``pos[j] + S @ cell − pos[i]`` (Å). It is computed in
torch (:meth:`Graph.edge_vectors`) from positions and cell, never stored, so gradients and
rotations act on it correctly.

Cell rows (``env.relax_cell``; a cell filter's 3 extra "atoms" per structure): when the observations
carry them, the graph holds their generalised forces and path history per graph, and every per-row
tensor of a batch (a move, a force, a history) lists all atom rows first, then the 3 cell rows of
each graph in graph order (:meth:`Graph.row_batch` is the row → graph index). Positions, cell and
edges stay the real geometry: the networks see the structure as it is.

Actors build the neighbour lists (:func:`with_neighbor_list` attaches them to an
observation, using the same ``NetworkConfig`` as the learner) and ``batch_graphs`` uses
``obs.edge_index`` when present; it builds missing lists itself, so observations without
one (tests, ``RLOptimizer``) still work. Why, with the measurements: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from ase.neighborlist import primitive_neighbor_list

from common.config import NetworkConfig
from common.errors import RelaxRLError
from common.observation import CELL_ROWS, HISTORY_DIM, Observation

__all__ = ["Graph", "GraphError", "batch_graphs", "neighbor_list", "stack_rows", "torch_dtype", "unstack_rows",
           "with_neighbor_list"]


class GraphError(RelaxRLError, ValueError):
    """An observation cannot be turned into a graph (bad shapes, species out of range)."""


# Above this many candidate pairs (n_atoms² × n_shifts) the dense numpy search would use too
# much memory; ASE's cell-list search takes over.
_DENSE_PAIR_LIMIT = 2_000_000


def _shift_range(cell: np.ndarray, pbc: np.ndarray, radius: float) -> np.ndarray:
    """Number of periodic images needed along each axis: ceil(radius / lattice-plane spacing)."""
    reps = np.zeros(3, dtype=np.int64)
    if not pbc.any():
        return reps
    if abs(float(np.linalg.det(cell))) < 1e-12:
        raise GraphError(f"periodic observation has a singular cell {cell.tolist()}; give a cell with volume > 0 or set pbc=False")
    # spacing of the planes spanned by the other two lattice vectors = 1 / |reciprocal vector k|
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # [3] Å
    reps[pbc] = np.ceil(radius / spacing[pbc]).astype(np.int64)
    return reps


def _cap_nearest(receiver: np.ndarray, dist: np.ndarray, max_neighbors: int) -> np.ndarray:
    """Indices of the edges kept when each receiver keeps its ``max_neighbors`` nearest senders.

    Ties are broken by the original edge order (stable sort), so the result is deterministic.
    """
    order = np.lexsort((dist, receiver))  # by receiver, then distance
    recv_sorted = receiver[order]
    # rank of each edge within its receiver's group
    starts = np.searchsorted(recv_sorted, recv_sorted, side="left")
    rank = np.arange(recv_sorted.shape[0]) - starts
    return np.sort(order[rank < max_neighbors])


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    radius: float,
    max_neighbors: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges within ``radius`` Å, at most ``max_neighbors`` per receiver (nearest first).

    Args:
        positions: [n, 3] Å. cell: [3, 3] Å (rows are lattice vectors). pbc: [3] bool.
    Returns:
        edge_index: [2, E] int64, (sender j, receiver i); edge_shift: [E, 3] int64 cell shift
        S of the sender, so the edge vector is ``positions[j] + S @ cell − positions[i]``.
        Periodic images of an atom itself are neighbours (S ≠ 0); the atom itself is not.
        ``max_neighbors = 0`` keeps every neighbour within the radius.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    n = positions.shape[0]
    reps = _shift_range(cell, pbc, radius)
    grids = [np.arange(-r, r + 1) for r in reps]
    shifts = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, 3)  # [n_S, 3]

    if n * n * shifts.shape[0] <= _DENSE_PAIR_LIMIT:
        offsets = shifts @ cell  # [n_S, 3] Å
        diff = (positions[None, :, :] - positions[:, None, :]).reshape(-1, 3)  # [n*n, 3], pos[j] − pos[i]
        # |diff + offset|² without materialising [n, n, n_S, 3]
        d2 = (diff * diff).sum(1)[:, None] + 2.0 * diff @ offsets.T + (offsets * offsets).sum(1)[None, :]  # [n*n, n_S]
        d2 = d2.reshape(n, n, -1)  # [n (receiver i), n (sender j), n_S]
        zero = int(np.flatnonzero((shifts == 0).all(axis=1))[0])
        idx = np.arange(n)
        d2[idx, idx, zero] = np.inf  # no self-edge
        recv, send, s = np.nonzero(d2 <= radius * radius)
        dist = np.sqrt(np.maximum(d2[recv, send, s], 0.0))
        shift = shifts[s]
    else:
        recv, send, shift, dist = primitive_neighbor_list("ijSd", pbc, cell, positions, radius, self_interaction=False)
    if recv.shape[0] and max_neighbors > 0:
        keep = _cap_nearest(recv, dist, max_neighbors)
        recv, send, shift = recv[keep], send[keep], shift[keep]
    edge_index = np.stack([send, recv]).astype(np.int64)  # [2, E]
    return edge_index, np.asarray(shift, dtype=np.int64).reshape(-1, 3)


def with_neighbor_list(obs: Observation, cfg: NetworkConfig) -> Observation:
    """A copy of ``obs`` carrying its neighbour list (``cfg.radius``, ``cfg.max_neighbors``).

    For actors: attach it before the observation goes to replay, so the learner skips the
    search (see docs/BENCHMARKS.md). Use the run's ``NetworkConfig``: the learner
    trusts an attached list and does not re-check its radius.
    """
    ei, es = neighbor_list(obs.positions, obs.cell, obs.pbc, cfg.radius, cfg.max_neighbors)
    return dataclasses.replace(obs, edge_index=ei, edge_shift=es)


@dataclass
class Graph:
    """A batch of graphs as tensors; atoms of all graphs concatenated in list order."""

    pos: torch.Tensor  # [n_atoms, 3] Å
    numbers: torch.Tensor  # [n_atoms] int64 atomic numbers
    forces: torch.Tensor  # [n_atoms, 3] eV/Å
    cell: torch.Tensor  # [n_graphs, 3, 3] Å (rows are lattice vectors)
    edge_index: torch.Tensor  # [2, n_edges] int64 (sender, receiver), batch-global atom indices
    edge_shift: torch.Tensor  # [n_edges, 3] float, integer cell shifts of the sender
    batch: torch.Tensor  # [n_atoms] int64 graph index of each atom
    num_atoms_per_graph: torch.Tensor  # [n_graphs] int64
    env_features: torch.Tensor  # [n_graphs, env_input_dim]
    history: torch.Tensor  # [n_atoms, 6 K]: K remembered moves (Å) and force changes (eV/Å), newest first; zeros when not recorded
    cell_forces: torch.Tensor | None = None  # [n_graphs, 3, 3] generalised cell force (eV/Å), None: the cell is fixed
    cell_history: torch.Tensor | None = None  # [n_graphs, 3, 6 K] the cell rows of the path history (with cell_forces)
    free: torch.Tensor | None = None  # [n_atoms, 3] 1.0 free, 0.0 held by a constraint; None: every coordinate free
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # memoized(): key → value

    def memoized(self, key: tuple, make: Callable[[], Any]) -> Any:
        """``make()``, computed once for this graph and ``key`` (what it depends on besides the graph's tensors): the
        edge geometry that every network of an update reads (learner/blocks.py ``EdgeEmbedding.geometry``). While the
        positions or the cell carry a gradient it is computed anew each time, so every pass has its own autograd
        graph. A graph's tensors are never changed in place; ``to`` and ``dataclasses.replace`` start a new memo."""
        if self.pos.requires_grad or self.cell.requires_grad:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def n_graphs(self) -> int:
        return int(self.num_atoms_per_graph.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.pos.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def device(self) -> torch.device:
        return self.pos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos.dtype

    @property
    def has_cell_rows(self) -> bool:
        """Whether the cell relaxes too: every graph has 3 cell rows after its atoms' rows."""
        return self.cell_forces is not None

    @property
    def n_rows(self) -> int:
        """Rows of a move of the whole batch: the atoms, plus 3 per graph when the cell relaxes."""
        return self.n_atoms + (CELL_ROWS * self.n_graphs if self.has_cell_rows else 0)

    def row_batch(self) -> torch.Tensor:
        """The graph of every row, atoms first, then 3 cell rows per graph. [n_rows] int64"""
        if not self.has_cell_rows:
            return self.batch
        cells = torch.arange(self.n_graphs, device=self.batch.device).repeat_interleave(CELL_ROWS)
        return torch.cat([self.batch, cells])

    def row_forces(self) -> torch.Tensor:
        """The generalised force of every row, [n_rows, 3] eV/Å."""
        if self.cell_forces is None:
            return self.forces
        return torch.cat([self.forces, self.cell_forces.reshape(-1, 3)])

    def row_history(self) -> torch.Tensor:
        """The path history of every row, [n_rows, 6 K]."""
        if self.cell_history is None:
            return self.history
        return torch.cat([self.history, self.cell_history.reshape(-1, self.history.shape[1])])

    def split_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(atom rows [n_atoms, ...], cell rows [n_graphs, 3, ...] or None) of a per-row tensor [n_rows, ...]."""
        if rows.shape[0] != self.n_rows:
            raise GraphError(f"a per-row tensor of {rows.shape[0]} rows for a batch of {self.n_rows} rows "
                             f"({self.n_atoms} atoms{' + 3 cell rows per graph' if self.has_cell_rows else ''})")
        if not self.has_cell_rows:
            return rows, None
        return rows[:self.n_atoms], rows[self.n_atoms:].reshape(self.n_graphs, CELL_ROWS, *rows.shape[1:])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Graph:
        """A copy on ``device``; floating tensors also cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            if not f.init:
                continue
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif dtype is not None and t.is_floating_point():
                out[f.name] = t.to(device=device, dtype=dtype)
            else:
                out[f.name] = t.to(device=device)
        return Graph(**out)

    def edge_vectors(self) -> torch.Tensor:
        """Receiver → sender-image vectors ``pos[j] + S @ cell − pos[i]``, [n_edges, 3] Å."""
        sender, receiver = self.edge_index[0], self.edge_index[1]
        cell = self.cell[self.batch[sender]]  # [n_edges, 3, 3]
        offset = torch.einsum("ek,ekl->el", self.edge_shift, cell)  # [n_edges, 3]
        return self.pos[sender] + offset - self.pos[receiver]


def stack_rows(per_obs: Sequence[np.ndarray], n_atoms: Sequence[int]) -> np.ndarray:
    """Per-observation row arrays ([n_i, ...], or [n_i + 3, ...] when the cell relaxes) in a batch's row order:
    every observation's atom rows in list order, then every observation's cell rows (:class:`Graph`). [n_rows, ...]"""
    atoms = [np.asarray(a)[:n] for a, n in zip(per_obs, n_atoms)]
    cells = [np.asarray(a)[n:] for a, n in zip(per_obs, n_atoms)]
    return np.concatenate(atoms + cells, axis=0)


def unstack_rows(rows: np.ndarray, n_atoms: Sequence[int], cell: bool) -> list[np.ndarray]:
    """The inverse of :func:`stack_rows`: a batch's rows [n_rows, ...] → per-observation arrays [n_i (+ 3), ...]."""
    rows = np.asarray(rows)
    total = int(sum(n_atoms))
    atoms = np.split(rows[:total], np.cumsum(n_atoms)[:-1])
    if not cell:
        return atoms
    cells = rows[total:].reshape(len(n_atoms), CELL_ROWS, *rows.shape[1:])
    return [np.concatenate([a, c]) for a, c in zip(atoms, cells)]


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """'float32' / 'float64' (or a torch dtype) → the torch dtype; other names are a GraphError."""
    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise GraphError(f"dtype {name!r} is not supported; use 'float32' or 'float64'")
    return table[name]


def _check(obs: Observation, k: int, cfg: NetworkConfig, env_input_dim: int | None) -> None:
    n = obs.n_atoms
    if obs.positions.shape != (n, 3) or obs.forces.shape != (n, 3):
        raise GraphError(
            f"observation {k}: positions {obs.positions.shape} and forces {obs.forces.shape} must both be [{n}, 3] "
            f"for {n} atomic numbers"
        )
    if obs.cell_forces is not None and np.shape(obs.cell_forces) != (CELL_ROWS, 3):
        raise GraphError(f"observation {k}: cell_forces has shape {np.shape(obs.cell_forces)}, expected (3, 3)")
    if obs.cell_history is not None and (obs.history is None
                                         or np.shape(obs.cell_history) != (CELL_ROWS, np.shape(obs.history)[1])):
        raise GraphError(f"observation {k}: cell_history has shape {np.shape(obs.cell_history)}, expected (3, 6 K) "
                         "with the K remembered steps of its history (and a history)")
    if obs.free is not None and np.shape(obs.free) != (n, 3):
        raise GraphError(f"observation {k}: free has shape {np.shape(obs.free)}, expected ({n}, 3)")
    if env_input_dim is not None and np.asarray(obs.env_features).size != env_input_dim:
        raise GraphError(
            f"observation {k}: {np.asarray(obs.env_features).size} env features but the networks expect "
            f"env.env_input_dim = {env_input_dim}; observe with the run's env config"
        )
    if n and (obs.numbers.min() < 1 or obs.numbers.max() > cfg.max_species):
        raise GraphError(
            f"observation {k}: atomic numbers {sorted(set(obs.numbers.tolist()))} outside 1..{cfg.max_species} "
            "(network.max_species)"
        )


def batch_graphs(
    observations: Sequence[Observation],
    cfg: NetworkConfig,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    env_input_dim: int | None = None,
) -> Graph:
    """Concatenate observations into one :class:`Graph`.

    Uses ``obs.edge_index``/``obs.edge_shift`` when present, else builds the neighbour list
    with ``cfg.radius`` and ``cfg.max_neighbors``. ``dtype`` defaults to ``cfg.dtype``.
    ``env_input_dim`` (the run's ``env.env_input_dim``), when given, is checked against
    every observation's env features.
    """
    if len(observations) == 0:
        raise GraphError("batch_graphs needs at least one observation")
    dt = torch_dtype(dtype if dtype is not None else cfg.dtype)
    width, with_cell, with_free = _batch_shape(observations)
    cols = _columns(observations, cfg, env_input_dim, width, with_cell, with_free)
    counts_t = torch.tensor(cols["counts"], dtype=torch.int64)

    def f(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    return Graph(
        pos=f(np.concatenate(cols["pos"])),
        numbers=torch.from_numpy(np.concatenate(cols["numbers"]).astype(np.int64)).to(device),
        forces=f(np.concatenate(cols["forces"])),
        cell=f(np.stack(cols["cells"])),
        edge_index=torch.from_numpy(np.concatenate(cols["edges"], axis=1)).to(device),
        edge_shift=f(np.concatenate(cols["shifts"])),
        batch=torch.repeat_interleave(torch.arange(len(counts_t)), counts_t).to(device),
        num_atoms_per_graph=counts_t.to(device),
        env_features=f(np.stack(cols["env"])),
        history=f(np.concatenate(cols["history"]).reshape(-1, width)),
        cell_forces=f(np.stack(cols["cell_forces"])) if with_cell else None,
        cell_history=f(np.stack(cols["cell_history"]).reshape(-1, CELL_ROWS, width)) if with_cell else None,
        free=f(np.concatenate(cols["free"]).reshape(-1, 3)) if with_free else None,
    )


def _batch_shape(observations: Sequence[Observation]) -> tuple[int, bool, bool]:
    """(history columns, cell rows?, free masks?) that a batch of ``observations`` shares; GraphError for
    observations of different env.history_steps or env.relax_cell."""
    widths = {np.shape(o.history)[1] for o in observations if o.history is not None}
    if len(widths) > 1:
        raise GraphError(f"observations carry path histories of different widths {sorted(widths)} (6 columns per "
                         "remembered step); batch observations of one env.history_steps")
    cells = {o.cell_forces is not None for o in observations}
    if len(cells) > 1:
        raise GraphError("some observations carry cell rows (the cell relaxes) and some do not; batch observations "
                         "of one env.relax_cell")
    return widths.pop() if widths else HISTORY_DIM, cells.pop(), any(o.free is not None for o in observations)


def _columns(observations: Sequence[Observation], cfg: NetworkConfig, env_input_dim: int | None, width: int,
             with_cell: bool, with_free: bool) -> dict[str, list]:
    """Each checked observation's arrays, one list per Graph field (missing histories and masks filled in), the
    edges numbered across the batch; an observation without an edge list gets one (cfg.radius, cfg.max_neighbors)."""
    cols: dict[str, list] = {k: [] for k in ("pos", "numbers", "forces", "cells", "env", "counts", "history", "edges",
                                             "shifts", "cell_forces", "cell_history", "free")}
    offset = 0
    for k, obs in enumerate(observations):
        _check(obs, k, cfg, env_input_dim)
        if obs.edge_index is not None:
            ei = np.asarray(obs.edge_index, dtype=np.int64).reshape(2, -1)
            es = np.asarray(obs.edge_shift if obs.edge_shift is not None else np.zeros((ei.shape[1], 3)), dtype=np.int64)
        else:
            ei, es = neighbor_list(obs.positions, obs.cell, obs.pbc, cfg.radius, cfg.max_neighbors)
        cols["pos"].append(obs.positions)
        cols["numbers"].append(obs.numbers)
        cols["forces"].append(obs.forces)
        cols["cells"].append(np.asarray(obs.cell, dtype=np.float64).reshape(3, 3))
        cols["env"].append(np.asarray(obs.env_features, dtype=np.float64).reshape(-1))
        cols["history"].append(obs.history if obs.history is not None else np.zeros((obs.n_atoms, width)))
        if with_cell:
            cols["cell_forces"].append(np.asarray(obs.cell_forces, dtype=np.float64).reshape(CELL_ROWS, 3))
            cols["cell_history"].append(obs.cell_history if obs.cell_history is not None
                                        else np.zeros((CELL_ROWS, width)))
        if with_free:
            cols["free"].append(obs.free if obs.free is not None else np.ones((obs.n_atoms, 3)))
        cols["counts"].append(obs.n_atoms)
        cols["edges"].append(ei + offset)
        cols["shifts"].append(es.reshape(-1, 3))
        offset += obs.n_atoms
    return cols

