"""The critic: twin Q networks (TD3) on the shared equivariant trunk (learner/blocks.py).

    critic = TwinCritic(cfg, env);  q1, q2 = critic(graph, displacement)   # [n_graphs] each

The action enters as a ``1o`` node feature (and its norm as a ``0e`` one); per-atom ``0e``
values are *averaged* over the atoms of a graph. Rewards are intensive (max and mean force
norms), so a mean keeps Q's scale independent of the system size across the curriculum.

Environment features never enter the equivariant path: with ``env_input_dim = 0`` there is no
``tail_mlp`` and Q is the pooled scalar; with ``env_input_dim > 0`` the critic computes
``tail_mlp([mean-pooled per-atom scalars, env]) → Q``.

The cell action (``env.relax_cell``: an action's 3 cell rows per graph, a 3×3 matrix A that turns
as R A Rᵀ) is fused late in the same way: :func:`cell_features` reduces A and the cell rows'
generalised force G to rotation invariants, which join the pooled scalars and the env features in
``tail_mlp``. With ``relax_cell`` off the critic is exactly the one without (no cell features, no
``tail_mlp`` unless env features ask for it).
"""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from common.config import EnvConfig, NetworkConfig
from learner.blocks import EquivariantTrunk, NodeInput, check_irreps, scatter_mean
from learner.graph import Graph, torch_dtype

__all__ = ["CELL_FEATURES", "Critic", "TwinCritic", "cell_features"]

CELL_FEATURES = 6
"""Invariants of a cell action the critic reads (:func:`cell_features`)."""


def cell_features(action: torch.Tensor, force: torch.Tensor, max_step: float) -> torch.Tensor:
    """Rotation invariants of the cell rows' action A [G, 3, 3] and generalised force G [G, 3, 3] (both turn as
    R X Rᵀ): tr A, ‖A‖, ‖A − tr A/3·I‖ (in units of max_step), log1p‖G‖, the sign-kept log1p of tr G, and
    cos(A, G) = tr(AᵀG)/(‖A‖‖G‖) (whether the cell moves along its force). [G, CELL_FEATURES]"""
    a = action / max_step
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    tr_a = torch.diagonal(a, dim1=-2, dim2=-1).sum(-1)  # [G]
    norm_a = torch.sqrt((a * a).sum((-2, -1)) + 1e-12)
    dev = a - tr_a[:, None, None] / 3.0 * eye
    norm_dev = torch.sqrt((dev * dev).sum((-2, -1)) + 1e-12)
    norm_g = torch.sqrt((force * force).sum((-2, -1)) + 1e-12)
    tr_g = torch.diagonal(force, dim1=-2, dim2=-1).sum(-1)
    cos = (a * force).sum((-2, -1)) / (norm_a * norm_g)
    return torch.stack([tr_a, norm_a, norm_dev, torch.log1p(norm_g), torch.sign(tr_g) * torch.log1p(tr_g.abs()), cos],
                       dim=-1)


class Critic(nn.Module):
    """Q(s, a): action as a 1o node feature, per-atom 0e values mean-pooled (late env fusion)."""

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_step = float(env.max_step)
        self.relax_cell = bool(env.relax_cell)
        self.node_input = NodeInput(cfg, env.max_step, with_action=True)
        self.trunk = EquivariantTrunk(cfg, self.node_input.irreps_out)
        check_irreps("node input", self.node_input.irreps_out, "trunk", self.trunk.irreps_in)
        late = env.env_input_dim + (CELL_FEATURES if self.relax_cell else 0)  # features fused after pooling
        if late > 0:
            self.irreps_out = o3.Irreps(f"{cfg.channels}x0e")
            self.tail_mlp = nn.Sequential(
                nn.Linear(cfg.channels + late, cfg.tail_hidden), nn.SiLU(), nn.Linear(cfg.tail_hidden, 1)
            )
        else:
            self.irreps_out = o3.Irreps("1x0e")
            self.tail_mlp = None
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_out)  # [N, hidden] → [N, scalars]
        self.to(torch_dtype(cfg.dtype))

    def forward(self, graph: Graph, action: torch.Tensor) -> torch.Tensor:
        """action [n_rows, 3] (the atoms' Å, then the cell rows when the cell relaxes) → Q [n_graphs]."""
        if graph.has_cell_rows != self.relax_cell:
            raise ValueError(f"critic built with env.relax_cell = {self.relax_cell} got a batch "
                             f"{'with' if graph.has_cell_rows else 'without'} cell rows")
        atoms, cell = graph.split_rows(action)
        x = self.trunk(self.node_input(graph, atoms), graph)  # [N, hidden]
        s = self.head(x)  # [N, 1] or [N, channels]
        pooled = scatter_mean(s, graph.batch, graph.num_atoms_per_graph)  # [G, 1] or [G, channels]
        if self.tail_mlp is None:
            return pooled.squeeze(-1)  # [G]
        late = [pooled, graph.env_features]
        if cell is not None:
            late.append(cell_features(cell, graph.cell_forces, self.max_step))  # [G, CELL_FEATURES]
        return self.tail_mlp(torch.cat(late, dim=-1)).squeeze(-1)  # [G]


class TwinCritic(nn.Module):
    """Two independent critics (TD3); ``forward`` → (q1, q2), each [n_graphs]."""

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__()
        self.critic1 = Critic(cfg, env)
        self.critic2 = Critic(cfg, env)

    def forward(self, graph: Graph, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.critic1(graph, action), self.critic2(graph, action)

    def q1(self, graph: Graph, action: torch.Tensor) -> torch.Tensor:
        """Q of the first critic only (the actor loss uses it), [n_graphs]."""
        return self.critic1(graph, action)
