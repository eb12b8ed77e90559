"""E(3)-equivariant actor and critic (e3nn) with late fusion of environment features.

    cfg, env = NetworkConfig(), EnvConfig(env_input_dim=0)   # env: max_step and env_input_dim
    graph = batch_graphs([obs1, obs2], cfg)
    actor = Actor(cfg, env);        displacement = actor(graph)            # [n_atoms, 3] Å
    critic = TwinCritic(cfg, env);  q1, q2 = critic(graph, displacement)   # [n_graphs] each

Shape of every network (NequIP/MACE pattern, one :class:`InteractionBlock` per layer):

    node input  species embedding (0e) ⊕ log1p|F| (0e) ⊕ F·log1p|F|/|F| (1o) [⊕ action terms]
    edges       Y^l(r̂_ij) for l ≤ lmax, Bessel basis of |r_ij| × smooth polynomial cutoff
    layer       o3.Linear → depthwise 'uvu' TensorProduct with per-edge weights from a radial
                MLP → scatter-sum to receivers / avg_num_neighbors → o3.Linear → Gate, plus
                an o3.Linear self-connection
    heads       actor: o3.Linear → 1x1o per atom, norm squashed to env.max_step Å, × env gate
                critic: o3.Linear → 0e per atom, mean-pooled per graph (→ tail_mlp with env)

Hidden irreps are ``channels × l(−1)^l`` for l ≤ lmax (0e + 1o at lmax 1), so positions,
forces and displacements are all ``1o`` and flip under inversion; Q is ``0e``.

Pooling: the critic *averages* per-atom values over the atoms of a graph. Rewards are
intensive (max and mean force norms), so a mean keeps Q's scale independent of the system
size across the curriculum.

Environment features never enter the equivariant path. With ``env_input_dim = 0`` the actor
has no gate module (its scale is exactly 1) and the critic has no ``tail_mlp`` (Q is the
pooled scalar). With ``env_input_dim > 0`` the actor's displacements are multiplied by a
per-graph gate ``sigmoid(mlp(env)) ∈ (0, 1)`` — the *action scale* — and the critic computes
``tail_mlp([mean-pooled per-atom scalars, env]) → Q``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ase.data import atomic_masses, covalent_radii
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from common.config import EnvConfig, NetworkConfig
from common.errors import RelaxRLError
from learner.graph import Graph, torch_dtype
from learner.quasi_newton import quasi_newton_step

__all__ = [
    "Actor",
    "PreconditionedActor",
    "QuasiNewtonActor",
    "ACTOR_HEADS",
    "build_actor",
    "Critic",
    "TwinCritic",
    "NetworkConfig",
    "InteractionBlock",
    "EquivariantTrunk",
    "IrrepsMismatchError",
    "check_irreps",
    "hidden_irreps",
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


class EdgeEmbedding(nn.Module):
    """Parameter-free geometry of the edges: spherical harmonics, radial basis, envelope."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.lmax)  # 1x0e + 1x1o (+ 1x2e ...)
        self.radial = RadialBasis(cfg.radius, cfg.num_basis)

    def forward(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ sh [E, irreps_sh.dim], radial basis [E, num_basis], envelope [E]."""
        vec = graph.edge_vectors()  # [E, 3] Å
        r = safe_norm(vec).squeeze(-1)  # [E]
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")  # [E, sh]
        return sh, self.radial(r), self.radial.envelope(r)


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
        self.radial = RadialMLP(num_basis, radial_hidden, self.tp.weight_numel)
        self.lin_out = o3.Linear(self.irreps_mid, self.nonlinearity.irreps_in)  # [N, mid] → [N, gate_in]
        self.self_connection = o3.Linear(self.irreps_in, self.irreps_out)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, sh: torch.Tensor, basis: torch.Tensor, envelope: torch.Tensor
    ) -> torch.Tensor:
        """x [N, irreps_in] → [N, irreps_out]."""
        sender, receiver = edge_index[0], edge_index[1]
        h = self.lin_up(x)  # [N, irreps_in]
        w = self.radial(basis) * envelope.unsqueeze(-1)  # [E, weight_numel], → 0 smoothly at the cutoff
        msg = self.tp(h.index_select(0, sender), sh, w)  # [E, irreps_mid] (index_select: cheaper backward than h[sender])
        agg = scatter_sum(msg, receiver, x.shape[0]) / self.avg_num_neighbors  # [N, irreps_mid]
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


class Actor(nn.Module):
    """Policy: per-atom displacement (1o, Å), |d| < env.max_step, times the env gate."""

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.max_step = float(env.max_step)
        self.node_input = NodeInput(cfg, env.max_step, with_action=False)
        self.trunk = EquivariantTrunk(cfg, self.node_input.irreps_out)
        check_irreps("node input", self.node_input.irreps_out, "trunk", self.trunk.irreps_in)
        self.irreps_out = o3.Irreps("1x1o")
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_out)  # [N, hidden] → [N, 3]
        self.env_gate = EnvGate(env.env_input_dim, cfg.tail_hidden) if env.env_input_dim > 0 else None
        self.to(torch_dtype(cfg.dtype))

    def ungated(self, graph: Graph) -> torch.Tensor:
        """Squashed displacement before the env gate, [n_atoms, 3] Å."""
        x = self.trunk(self.node_input(graph), graph)  # [N, hidden]
        v = self.head(x)  # [N, 3]
        n = safe_norm(v)  # [N, 1]
        return v * (self.max_step * torch.tanh(n) / n)  # [N, 3], |d| < max_step

    def action_scale(self, graph: Graph) -> torch.Tensor:
        """The env gate per graph, [n_graphs] (exactly ones without env features)."""
        if self.env_gate is None:
            return graph.pos.new_ones(graph.n_graphs)
        return self.env_gate(graph.env_features)

    def forward(self, graph: Graph, return_scale: bool = False):
        """→ displacement [n_atoms, 3] Å, or (displacement, scale [n_graphs]) with ``return_scale``."""
        d = self.ungated(graph)
        scale = self.action_scale(graph)  # [G]
        if self.env_gate is not None:
            d = d * scale[graph.batch].unsqueeze(-1)
        return (d, scale) if return_scale else d


class PreconditionedActor(Actor):
    """Policy as a learned, per-atom preconditioned heavy-ball step that always points downhill
    (``network.actor_head = 'preconditioned'``)::

        d_i = α_i·F_i + g_i·β_i·m_i + c_i,    |d_i| squashed below env.max_step, × env gate

    α_i = step_size·exp(s_α) > 0 (Å²/eV) and β_i = 0.95·sigmoid(s_β + b) ∈ (0, 0.95) are
    invariants (``0e`` outputs) of the trunk, m_i the previous actual move (the path history;
    zeros without it) and c_i = ½·α_i·|F_i|·v/(1 + |v|) a ``1o`` correction shorter than half of
    α_i·|F_i|. The momentum gate g_i is 1 while the previous move still goes along the force
    (m_i·F_i > 0) and 0 once it overshot (FIRE's velocity reset, per atom). So every proposed
    move is a descent direction for its atom, d_i·F_i ≥ ½·α_i·|F_i|² > 0: the network chooses
    how far and how much to bend and to carry on, never to go uphill. Every term vanishes with
    the forces and the last move, so near a minimum the step is as precise as the forces, and a
    fixed atom (zero force under its constraint) proposes no move. The raw scalars are scaled by
    0.1, so an untrained actor is heavy-ball steepest descent with α ≈ step_size, β ≈ momentum.
    """

    _BETA_MAX = 0.95

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__(cfg, env)
        self.step_size = float(cfg.step_size)
        self.beta_bias = math.log(cfg.momentum / (self._BETA_MAX - cfg.momentum)) if cfg.momentum > 0 else -10.0
        self.irreps_head = o3.Irreps("2x0e + 1x1o")
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_head)  # [N, hidden] → [N, 5]: s_α, s_β, v
        self.to(torch_dtype(cfg.dtype))

    def ungated(self, graph: Graph) -> torch.Tensor:
        """Squashed displacement before the env gate, [n_atoms, 3] Å."""
        x = self.trunk(self.node_input(graph), graph)  # [N, hidden]
        h = self.head(x)  # [N, 5]
        s = 0.1 * h[:, :2]  # [N, 2] invariants
        alpha = self.step_size * torch.exp(s[:, :1].clamp(-5.0, 5.0))  # [N, 1] Å²/eV
        beta = self._BETA_MAX * torch.sigmoid(s[:, 1:2] + self.beta_bias)  # [N, 1]
        v = h[:, 2:5]  # [N, 3] 1o
        f = graph.forces  # [N, 3] eV/Å
        m = graph.history[:, :3]  # [N, 3] Å, previous move
        c = 0.5 * alpha * safe_norm(f) * v / (1.0 + safe_norm(v))  # [N, 3] Å, |c| < ½ α |F|
        gate = ((m * f).sum(-1, keepdim=True) > 0).to(f.dtype)  # [N, 1]: momentum only while m·F > 0
        d = alpha * f + gate * beta * m + c  # [N, 3] Å, d·F ≥ ½ α |F|²
        n = safe_norm(d)
        return d * (self.max_step * torch.tanh(n / self.max_step) / n)  # [N, 3], |d| < max_step


class QuasiNewtonActor(Actor):
    """Policy as a learned, preconditioned quasi-Newton step (``network.actor_head = 'quasi-newton'``)::

        d = H F,    then scaled as a whole so that the longest atom move is ≤ env.max_step

    H is the L-BFGS inverse-Hessian estimate of the K = ``env.history_steps`` remembered steps
    of the path history, built on a learned initial inverse Hessian that is block-diagonal per
    atom (:func:`learner.quasi_newton.quasi_newton_step`): ``H0_i = s·C_i`` with the compliance::

        C_i = step_size · exp(a_i) · expm(A_i),    A_i = Σ_c sym(v_ic ⊗ u_ic)

    a_i an invariant (``0e``) and v_ic, u_ic ``1o`` outputs of the trunk, so C_i is a symmetric
    positive-definite 3×3 compliance (Å²/eV, the inverse of the atom's Hessian block it stands
    for) that turns with the structure: the network tells how stiff each atom's surroundings
    are, and in which directions. s is 1 before the path has a pair with positive curvature,
    then the secant scale over the compliance where the forces are. What the trunk sees of the
    path is the newest step (``network.path_history``). The raw outputs are scaled by 0.1, so
    an untrained actor is L-BFGS with Nocedal's scaling (H0 = γ I; the first step
    ``step_size``·F). H is positive definite, so F·d > 0: every proposed move goes downhill, and
    it vanishes with the forces. An atom held by an ASE constraint (zero force, never moves)
    gets no move: H0 is per atom and its s, y are zero.
    """

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__(cfg, env)
        self.step_size = float(cfg.step_size)
        self.irreps_head = o3.Irreps("1x0e + 4x1o")  # a_i; v_1, u_1, v_2, u_2
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_head)  # [N, hidden] → [N, 13]
        self.to(torch_dtype(cfg.dtype))

    def compliance(self, graph: Graph) -> torch.Tensor:
        """The learned per-atom compliance C_i (Å²/eV, SPD), [N, 3, 3]."""
        x = self.trunk(self.node_input(graph), graph)  # [N, hidden]
        h = 0.1 * self.head(x)  # [N, 13]
        a = h[:, 0].clamp(-5.0, 5.0)  # [N]
        vecs = h[:, 1:].reshape(-1, 4, 3)  # [N, 4, 3]: v_1, u_1, v_2, u_2
        outer = vecs[:, 0::2, :, None] * vecs[:, 1::2, None, :]  # [N, 2, 3, 3] v_c ⊗ u_c
        sym = (outer + outer.transpose(-1, -2)).sum(1) * 0.5  # [N, 3, 3]
        return self.step_size * torch.exp(a)[:, None, None] * torch.linalg.matrix_exp(sym)

    def ungated(self, graph: Graph) -> torch.Tensor:
        """The bounded quasi-Newton displacement before the env gate, [n_atoms, 3] Å."""
        return quasi_newton_step(graph.forces, graph.history, self.compliance(graph), graph.batch, graph.n_graphs,
                                 self.max_step)


ACTOR_HEADS = {"free": Actor, "preconditioned": PreconditionedActor, "quasi-newton": QuasiNewtonActor}
"""The actor class of each ``network.actor_head``."""


def build_actor(cfg: NetworkConfig, env: EnvConfig) -> Actor:
    """The actor class ``network.actor_head`` names."""
    return ACTOR_HEADS[cfg.actor_head](cfg, env)


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


def count_parameters(modules: Sequence[nn.Module] | nn.Module) -> int:
    """Number of trainable parameters."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
