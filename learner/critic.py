"""The critic: twin Q networks (TD3) on the shared equivariant trunk (learner/blocks.py).

    critic = TwinCritic(cfg, env);  q1, q2 = critic(graph, displacement)   # [n_graphs] each

The action enters as a ``1o`` node feature (and its norm as a ``0e`` one); per-atom ``0e``
values are *averaged* over the atoms of a graph. Rewards are intensive (max and mean force
norms), so a mean keeps Q's scale independent of the system size across the curriculum.

Environment features never enter the equivariant path: with ``env_input_dim = 0`` there is no
``tail_mlp`` and Q is the pooled scalar; with ``env_input_dim > 0`` the critic computes
``tail_mlp([mean-pooled per-atom scalars, env]) → Q``.
"""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from common.config import EnvConfig, NetworkConfig
from learner.blocks import EquivariantTrunk, NodeInput, check_irreps, scatter_mean
from learner.graph import Graph, torch_dtype

__all__ = ["Critic", "TwinCritic"]


class Critic(nn.Module):
    """Q(s, a): action as a 1o node feature, per-atom 0e values mean-pooled (late env fusion)."""

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.node_input = NodeInput(cfg, env.max_step, with_action=True)
        self.trunk = EquivariantTrunk(cfg, self.node_input.irreps_out)
        check_irreps("node input", self.node_input.irreps_out, "trunk", self.trunk.irreps_in)
        if env.env_input_dim > 0:
            self.irreps_out = o3.Irreps(f"{cfg.channels}x0e")
            self.tail_mlp = nn.Sequential(
                nn.Linear(cfg.channels + env.env_input_dim, cfg.tail_hidden), nn.SiLU(), nn.Linear(cfg.tail_hidden, 1)
            )
        else:
            self.irreps_out = o3.Irreps("1x0e")
            self.tail_mlp = None
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_out)  # [N, hidden] → [N, scalars]
        self.to(torch_dtype(cfg.dtype))

    def forward(self, graph: Graph, action: torch.Tensor) -> torch.Tensor:
        """action [n_atoms, 3] Å → Q [n_graphs]."""
        x = self.trunk(self.node_input(graph, action), graph)  # [N, hidden]
        s = self.head(x)  # [N, 1] or [N, channels]
        pooled = scatter_mean(s, graph.batch, graph.num_atoms_per_graph)  # [G, 1] or [G, channels]
        if self.tail_mlp is None:
            return pooled.squeeze(-1)  # [G]
        return self.tail_mlp(torch.cat([pooled, graph.env_features], dim=-1)).squeeze(-1)  # [G]


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
