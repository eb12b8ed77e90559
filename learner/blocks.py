"""E(3)-equivariant building blocks (e3nn) shared by the actor heads (learner/heads.py) and the
critic (learner/critic.py).

Shape of every network (NequIP/MACE pattern, one :class:`InteractionBlock` per layer)::

    node input  species embedding (0e) ⊕ log1p|F| (0e) ⊕ F·log1p|F|/|F| (1o) [⊕ path history]
                [⊕ action terms]                                            (:class:`NodeInput`)
    edges       Y^l(r̂_ij) for l ≤ lmax, Bessel basis of |r_ij| × smooth polynomial cutoff
    layer       o3.Linear → depthwise 'uvu' TensorProduct with per-edge weights from a radial
                MLP → scatter-sum to receivers / avg_num_neighbors → o3.Linear → Gate, plus
                an o3.Linear self-connection                        (:class:`EquivariantTrunk`)
    heads       actor: o3.Linear → 1o per atom (learner/heads.py)
                critic: o3.Linear → 0e per atom, mean-pooled per graph (learner/critic.py)

Hidden irreps are ``channels × l(−1)^l`` for l ≤ lmax (0e + 1o at lmax 1), so positions,
forces and displacements are all ``1o`` and flip under inversion; Q is ``0e``. Consecutive
blocks are checked to fit when a network is built (:func:`check_irreps`), not in ``forward``.

Environment features never enter the equivariant path: they reach the actor through the
:class:`EnvGate` and the critic through its ``tail_mlp``, and are absent with
``env_input_dim = 0``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from ase.data import atomic_masses, covalent_radii
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from common.config import NetworkConfig
from common.errors import RelaxRLError
from learner.graph import Graph
from learner.messages import depthwise_messages, message_plan

__all__ = [
    "EdgeEmbedding",
    "EdgeGeometry",
    "EnvGate",
    "EquivariantTrunk",
    "InteractionBlock",
    "IrrepsMismatchError",
    "NodeInput",
    "SpeciesEmbedding",
    "check_irreps",
    "count_parameters",
    "element_descriptors",
    "hidden_irreps",
    "log_scaled",
    "safe_norm",
    "scatter_mean",
    "scatter_sum",
]

_EPS = 1e-12


class IrrepsMismatchError(RelaxRLError, ValueError):
    """Two consecutive blocks were built with irreps that do not fit."""


def check_irreps(upstream: str, irreps_out: o3.Irreps, downstream: str, irreps_in: o3.Irreps) -> None:
    """Raise :class:`IrrepsMismatchError` naming both blocks unless ``irreps_out == irreps_in``."""
    if o3.Irreps(irreps_out) != o3.Irreps(irreps_in):
        raise IrrepsMismatchError(
            f"block {upstream!r} outputs {o3.Irreps(irreps_out)} but block {downstream!r} expects "
            f"{o3.Irreps(irreps_in)}; build {downstream!r} with irreps_in={o3.Irreps(irreps_out)}"
        )


def hidden_irreps(channels: int, lmax: int) -> o3.Irreps:
    """``channels × l`` with parity (−1)^l for l = 0..lmax: 0e + 1o + 2e + ..."""
    return o3.Irreps([(channels, (deg, (-1) ** deg)) for deg in range(lmax + 1)])


def safe_norm(v: torch.Tensor) -> torch.Tensor:
    """|v| over the last axis, keepdim, with a finite gradient at v = 0. [..., 1]"""
    return torch.sqrt((v * v).sum(dim=-1, keepdim=True) + _EPS)


def log_scaled(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compress a vector's magnitude: returns (log1p|v| [..., 1], v·log1p|v|/|v| [..., 3]).

    Scaling by a function of the norm keeps the vector equivariant (and 1o) while large
    forces (tens of eV/Å on a rattled start) do not blow up the features.
    """
    n = safe_norm(v)  # [..., 1]
    m = torch.log1p(n)
    return m, v * (m / n)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Sum rows of ``src`` [E, ...] into ``size`` rows by ``index`` [E]."""
    out = src.new_zeros((size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of rows of ``src`` [N, ...] per group; ``counts`` [G] atoms per group."""
    total = scatter_sum(src, index, counts.shape[0])  # [G, ...]
    shape = (-1,) + (1,) * (src.dim() - 1)
    return total / counts.clamp_min(1).to(src.dtype).view(shape)


class RadialBasis(nn.Module):
    """Bessel basis sin(nπr/rc)/r of the distance times a smooth polynomial cutoff (p = 6)."""

    def __init__(self, radius: float, num_basis: int, p: int = 6) -> None:
        super().__init__()
        self.radius = float(radius)
        self.num_basis = int(num_basis)
        self.p = p
        self.register_buffer("freq", torch.arange(1, num_basis + 1) * math.pi / radius)  # [num_basis] 1/Å

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        """1 at r = 0, 0 with vanishing first two derivatives at r = radius. [E]"""
        x = (r / self.radius).clamp(max=1.0)
        p = self.p
        env = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return env * (x < 1.0)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r [E] Å → basis [E, num_basis] (already multiplied by the envelope)."""
        r = r.unsqueeze(-1)  # [E, 1]
        basis = math.sqrt(2.0 / self.radius) * torch.sin(self.freq * r) / r.clamp_min(1e-6)  # [E, num_basis]
        return basis * self.envelope(r.squeeze(-1)).unsqueeze(-1)


class EdgeGeometry(NamedTuple):
    """What the networks read of a batch's edges (:meth:`EdgeEmbedding.geometry`)."""

    vectors: torch.Tensor  # [E, 3] Å, receiver → sender image
    length: torch.Tensor  # [E] Å (safe_norm)
    sh: torch.Tensor  # [E, irreps_sh.dim] spherical harmonics of the direction
    basis: torch.Tensor  # [E, num_basis] radial basis, times the envelope
    envelope: torch.Tensor  # [E] smooth cutoff


class EdgeEmbedding(nn.Module):
    """Parameter-free geometry of the edges: spherical harmonics, radial basis, envelope."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.lmax)  # 1x0e + 1x1o (+ 1x2e ...)
        self.radial = RadialBasis(cfg.radius, cfg.num_basis)

    def geometry(self, graph: Graph) -> EdgeGeometry:
        """The edges' vectors, lengths, harmonics, radial basis and envelope, computed once per batch for every network
        with the same lmax, radius and basis (``Graph.memoized``): the actors and critics of one update read the same
        numbers (they have no parameters)."""
        key = ("edge_geometry", self.irreps_sh.lmax, self.radial.radius, self.radial.num_basis, self.radial.p,
               self.radial.freq.dtype, self.radial.freq.device)
        return graph.memoized(key, lambda: self._geometry(graph))

    def _geometry(self, graph: Graph) -> EdgeGeometry:
        vec = graph.edge_vectors()  # [E, 3] Å
        r = safe_norm(vec).squeeze(-1)  # [E]
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")  # [E, sh]
        return EdgeGeometry(vec, r, sh, self.radial(r), self.radial.envelope(r))

    def forward(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ sh [E, irreps_sh.dim], radial basis [E, num_basis], envelope [E]."""
        geo = self.geometry(graph)
        return geo.sh, geo.basis, geo.envelope


class RadialMLP(nn.Module):
    """Radial basis [E, num_basis] → per-edge tensor-product weights [E, n_weights]."""

    def __init__(self, num_basis: int, hidden: int, n_weights: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_basis, hidden), nn.SiLU(), nn.Linear(hidden, n_weights))

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        return self.net(basis)


def _depthwise_tp(irreps_node: o3.Irreps, irreps_sh: o3.Irreps, target: o3.Irreps) -> o3.TensorProduct:
    """'uvu' tensor product node ⊗ sh → (each node channel kept) for outputs whose irrep is in ``target``."""
    wanted = {ir for _, ir in target}
    irreps_mid: list[tuple[int, o3.Irrep]] = []
    instructions = []
    for i1, (mul, ir1) in enumerate(irreps_node):
        for i2, (_, ir2) in enumerate(irreps_sh):
            for ir_out in ir1 * ir2:
                if ir_out in wanted:
                    instructions.append((i1, i2, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    return o3.TensorProduct(
        irreps_node,
        irreps_sh,
        o3.Irreps(irreps_mid),
        instructions,
        shared_weights=False,
        internal_weights=False,
    )


class InteractionBlock(nn.Module):
    """One message-passing layer: Linear → uvu TP with edge weights → scatter → Linear → Gate (+ skip)."""

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_sh: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        num_basis: int,
        radial_hidden: int,
        avg_num_neighbors: float,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        self.irreps_out = o3.Irreps(irreps_out)
        self.avg_num_neighbors = float(avg_num_neighbors)

        scalars = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in self.irreps_out if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, "0e")]) if gated.num_irreps else o3.Irreps("")
        self.nonlinearity = Gate(scalars, [nn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated)
        check_irreps("Gate nonlinearity", self.nonlinearity.irreps_out, "InteractionBlock output", self.irreps_out)

        self.lin_up = o3.Linear(self.irreps_in, self.irreps_in)  # [N, irreps_in] → [N, irreps_in]
        self.tp = _depthwise_tp(self.irreps_in, self.irreps_sh, self.irreps_out)  # [E, in] ⊗ [E, sh] → [E, mid]
        self.irreps_mid = self.tp.irreps_out
        self.plan = message_plan(self.tp)  # lmax 1: learner/messages.py's edge-chunked path; else None (e3nn's)
        self.radial = RadialMLP(num_basis, radial_hidden, self.tp.weight_numel)
        self.lin_out = o3.Linear(self.irreps_mid, self.nonlinearity.irreps_in)  # [N, mid] → [N, gate_in]
        self.self_connection = o3.Linear(self.irreps_in, self.irreps_out)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor
    ) -> torch.Tensor:
        """x [N, irreps_in] → [N, irreps_out]."""
        h = self.lin_up(x)  # [N, irreps_in]
        w = self.radial(basis)  # [E, weight_numel], times the envelope: → 0 smoothly at the cutoff
        # Σ over each receiver's edges of tp(h[sender], sh, envelope·w)
        agg = depthwise_messages(self.plan, self.tp, h, edge_index, sh, w, envelope, x.shape[0])  # [N, irreps_mid]
        agg = agg / self.avg_num_neighbors
        return self.nonlinearity(self.lin_out(agg)) + self.self_connection(x)  # [N, irreps_out]


class EquivariantTrunk(nn.Module):
    """Input node features → ``num_layers`` interaction blocks → hidden node features."""

    def __init__(self, cfg: NetworkConfig, irreps_node_in: o3.Irreps | str) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_node_in)
        self.irreps_hidden = hidden_irreps(cfg.channels, cfg.lmax)
        self.edges = EdgeEmbedding(cfg)
        blocks = []
        irreps = self.irreps_in
        for _ in range(cfg.num_layers):
            blocks.append(
                InteractionBlock(
                    irreps, self.edges.irreps_sh, self.irreps_hidden, cfg.num_basis, cfg.radial_hidden, cfg.avg_num_neighbors
                )
            )
            irreps = self.irreps_hidden
        self.blocks = nn.ModuleList(blocks)
        check_irreps("node input", self.irreps_in, "interaction 0", self.blocks[0].irreps_in)
        for k in range(1, len(self.blocks)):
            check_irreps(f"interaction {k - 1}", self.blocks[k - 1].irreps_out, f"interaction {k}", self.blocks[k].irreps_in)
        self.irreps_out = self.blocks[-1].irreps_out

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        """x [N, irreps_in] → [N, irreps_hidden]."""
        sh, basis, envelope = self.edges(graph)
        for block in self.blocks:
            x = block(x, graph.edge_index, sh, basis, envelope)
        return x


def element_descriptors(max_z: int) -> torch.Tensor:
    """Per atomic number 0..max_z: [covalent radius (Å), period / 7, group / 18, log10 mass / 2.5]
    from ase.data (lanthanides and actinides in group 3; row 0 is zeros). [max_z + 1, 4]"""
    bounds = (0, 2, 10, 18, 36, 54, 86, 118)
    rows = [[0.0, 0.0, 0.0, 0.0]]
    for z in range(1, max_z + 1):
        period = next(p for p in range(1, 8) if z <= bounds[p])
        pos = z - bounds[period - 1]
        if period == 1:
            group = 1 if z == 1 else 18
        elif period in (2, 3):
            group = pos if pos <= 2 else pos + 10
        elif period in (4, 5):
            group = pos
        else:
            group = pos if pos <= 2 else (3 if pos <= 17 else pos - 14)
        rows.append([float(covalent_radii[z]), period / 7.0, group / 18.0, math.log10(float(atomic_masses[z])) / 2.5])
    return torch.tensor(rows, dtype=torch.float64)


class SpeciesEmbedding(nn.Module):
    """Element features from physical descriptors (:func:`element_descriptors`) through a small MLP:
    ``numbers`` [N] → [N, channels]; elements absent from training get interpolated features."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.register_buffer("table", element_descriptors(cfg.max_species))  # [Z + 1, 4]
        self.mlp = nn.Sequential(nn.Linear(4, cfg.channels), nn.SiLU(), nn.Linear(cfg.channels, cfg.channels))

    def forward(self, numbers: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.table[numbers].to(self.mlp[0].weight.dtype))  # [N, channels]


class NodeInput(nn.Module):
    """Species embedding and force features (and optionally the action) as node irreps.

    Output irreps: ``channels x0e`` (species) + ``1x0e`` log1p|F| [+ ``4x0e`` history invariants]
    [+ ``1x0e`` |a|/max_step] + ``1x1o`` F·log1p|F|/|F| [+ ``2x1o`` m/max_step, ΔF·log1p|ΔF|/|ΔF|]
    [+ ``1x1o`` a/max_step].

    With ``network.path_history`` the previous move m (Å) and the force change ΔF (eV/Å) of
    ``graph.history`` enter as vectors, and as the invariants a message-passing layer cannot
    form at one atom: |m|/max_step, log1p|ΔF|, cos(m, F) (FIRE's power sign) and the
    signed log of the curvature along the last move, −m·ΔF/|m|² (eV/Å²; what a secant
    method estimates).
    """

    def __init__(self, cfg: NetworkConfig, max_step: float, with_action: bool) -> None:
        super().__init__()
        self.with_action = with_action
        self.with_history = bool(cfg.path_history)
        self.max_step = float(max_step)
        self.embedding = SpeciesEmbedding(cfg) if cfg.species == "descriptors" else nn.Embedding(
            cfg.max_species + 1, cfg.channels)
        k = 2 if with_action else 1
        h_s, h_v = (4, 2) if self.with_history else (0, 0)
        self.irreps_out = o3.Irreps(f"{cfg.channels + k + h_s}x0e + {k + h_v}x1o")

    def _history(self, graph: Graph) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(scalars [N, 1] x4, vectors [N, 3] x2) of the path history."""
        m = graph.history[:, :3]  # [N, 3] Å, previous move
        df = graph.history[:, 3:6]  # [N, 3] eV/Å, force change (newest remembered step)
        m_norm, f_norm = safe_norm(m), safe_norm(graph.forces)  # [N, 1]
        df_mag, df_vec = log_scaled(df)
        cos = (m * graph.forces).sum(-1, keepdim=True) / (m_norm * f_norm)  # [N, 1]
        curv = -(m * df).sum(-1, keepdim=True) / (m_norm * m_norm)  # [N, 1] eV/Å²
        curv = torch.sign(curv) * torch.log1p(curv.abs())
        return [m_norm / self.max_step, df_mag, cos, curv], [m / self.max_step, df_vec]

    def forward(self, graph: Graph, action: torch.Tensor | None = None) -> torch.Tensor:
        """→ [N, irreps_out]."""
        f_mag, f_vec = log_scaled(graph.forces)  # [N, 1], [N, 3]
        scalars = [self.embedding(graph.numbers), f_mag]  # [N, channels], [N, 1]
        vectors = [f_vec]
        if self.with_history:
            hs, hv = self._history(graph)
            scalars += hs
            vectors += hv
        if self.with_action:
            if action is None or action.shape != graph.pos.shape:
                raise ValueError(f"critic needs an action of shape {tuple(graph.pos.shape)} (one 3-vector per atom)")
            a = action / self.max_step  # [N, 3], dimensionless
            scalars.append(safe_norm(a))
            vectors.append(a)
        return torch.cat(scalars + vectors, dim=-1)  # 0e block first, then 1o block


class EnvGate(nn.Module):
    """Per-graph action scale sigmoid(mlp(env)) ∈ (0, 1); starts near 0.88 (bias +2)."""

    def __init__(self, env_input_dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(env_input_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.mlp[-1].bias, 2.0)

    def forward(self, env: torch.Tensor) -> torch.Tensor:
        """env [G, env_input_dim] → scale [G]."""
        return torch.sigmoid(self.mlp(env)).squeeze(-1)


def count_parameters(modules: Sequence[nn.Module] | nn.Module) -> int:
    """Number of trainable parameters."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
