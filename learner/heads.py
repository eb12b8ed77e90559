"""The actor heads: the policy networks ``network.actor_head`` chooses among (:data:`HEAD_CLASSES`).

    cfg, env = NetworkConfig(), EnvConfig(env_input_dim=0)   # env: max_step and env_input_dim
    actor = build_actor(cfg, env);  displacement = actor(batch_graphs([obs1, obs2], cfg))   # [n_atoms, 3] Å

Each head is a subclass of :class:`Actor` on the shared equivariant trunk (learner/blocks.py)
that overrides ``ungated`` (the displacement before the env gate, bounded by env.max_step):

    'free'            :class:`Actor`: o3.Linear → 1x1o per atom, norm squashed below env.max_step
    'preconditioned'  :class:`PreconditionedActor`: a learned per-atom heavy-ball step, always downhill
    'quasi-newton'    :class:`QuasiNewtonActor`: L-BFGS over the path history on a learned per-atom
                      compliance (the maths: learner/quasi_newton.py)
    'model-hessian'   :class:`ModelHessianActor`: L-BFGS over the path history on a learned sparse model
                      Hessian that couples neighbouring atoms, solved by conjugate gradients

Environment features never enter the equivariant path. With ``env_input_dim = 0`` the actor
has no gate module (its scale is exactly 1); with ``env_input_dim > 0`` its displacements are
multiplied by a per-graph gate ``sigmoid(mlp(env)) ∈ (0, 1)``, the *action scale*.

Generalised rows (``env.relax_cell``): when the graph carries cell rows (a cell filter's 3 rows per
structure after its atoms, :class:`~learner.graph.Graph`), a head's move has ``graph.n_rows`` rows,
atom rows first, then 3 cell rows per graph, and ``graph.row_batch()`` says which graph each row
belongs to. A head that moves the cell sets ``moves_cell = True`` and is listed in
:data:`common.names.CELL_HEAD_NAMES`; the others refuse such a graph. The quasi-Newton head runs
its L-BFGS recursion over all rows with one initial inverse Hessian over them
(:meth:`QuasiNewtonActor.row_compliance`: the atoms' learned 3×3 blocks and a learned cell block
c_cell·I, SPD); another preconditioner (a model Hessian solved by CG, say) plugs in the same way,
as a function of per-row vectors with a cell block of its own.

A new head is a new subclass here, an entry in :data:`HEAD_CLASSES` and its name in
:data:`common.names.ACTOR_HEAD_NAMES`.
"""
from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from common.config import EnvConfig, NetworkConfig, RunConfig
from common.errors import RelaxRLError
from common.names import CELL_HEAD_NAMES
from learner.blocks import EnvGate, EquivariantTrunk, NodeInput, check_irreps, safe_norm, scatter_mean
from learner.graph import Graph, torch_dtype
from learner.quasi_newton import ModelHessian, model_hessian_step, quasi_newton_step

__all__ = ["HEAD_CLASSES", "Actor", "ModelHessianActor", "PreconditionedActor", "QuasiNewtonActor", "build_actor"]


class Actor(nn.Module):
    """Policy: per-atom displacement (1o, Å), |d| < env.max_step, times the env gate."""

    moves_cell = False
    """Whether the head has a cell action (rows for a cell filter's cell, module docstring)."""

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
        """→ displacement [n_rows, 3] (the atoms' in Å, then a cell filter's cell rows when the graph has them), or
        (displacement, scale [n_graphs]) with ``return_scale``."""
        if graph.has_cell_rows and not self.moves_cell:
            raise RelaxRLError(f"actor head {type(self).__name__} has no cell action, but the observations carry cell "
                               "rows (the cell relaxes); use network.actor_head " + " or ".join(map(repr, CELL_HEAD_NAMES))
                               + " for env.relax_cell")
        d = self.ungated(graph)
        scale = self.action_scale(graph)  # [G]
        if self.env_gate is not None:
            d = d * scale[graph.row_batch()].unsqueeze(-1)
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

    With the cell (``env.relax_cell``; the graph's cell rows) the recursion runs over all
    generalised rows of each graph, atoms and the cell filter's 3 cell rows, and H0 gets a cell
    block ``c_cell·I`` (one per graph, on the cell rows' 9 numbers)::

        c_cell = step_size · exp(b),    b = 0.1 · mean over the graph's atoms of a 0e output

    an invariant, so rotating the structure rotates the cell move (R X Rᵀ) and H0 stays SPD. With
    every output 0 (the documented start) the move is L-BFGS with Nocedal's scaling over the
    filter's rows, H0 = γ I for atoms and cell alike. A checkpoint trained without the cell has no
    cell readout; on cell rows it uses the mean of its atoms' tr(C_i)/3 as c_cell.
    """

    moves_cell = True

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__(cfg, env)
        self.step_size = float(cfg.step_size)
        self.irreps_head = o3.Irreps("1x0e + 4x1o")  # a_i; v_1, u_1, v_2, u_2
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_head)  # [N, hidden] → [N, 13]
        # the cell's compliance: a per-atom invariant, mean-pooled per graph (built only when the cell relaxes,
        # so a checkpoint of a run without it keeps its parameter names)
        self.cell_head = o3.Linear(self.trunk.irreps_out, o3.Irreps("1x0e")) if env.relax_cell else None
        self.to(torch_dtype(cfg.dtype))

    def _compliance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-atom compliance C_i (Å²/eV, SPD) from the trunk's features x [N, hidden]. [N, 3, 3]"""
        h = 0.1 * self.head(x)  # [N, 13]
        a = h[:, 0].clamp(-5.0, 5.0)  # [N]
        vecs = h[:, 1:].reshape(-1, 4, 3)  # [N, 4, 3]: v_1, u_1, v_2, u_2
        outer = vecs[:, 0::2, :, None] * vecs[:, 1::2, None, :]  # [N, 2, 3, 3] v_c ⊗ u_c
        sym = (outer + outer.transpose(-1, -2)).sum(1) * 0.5  # [N, 3, 3]
        return self.step_size * torch.exp(a)[:, None, None] * torch.linalg.matrix_exp(sym)

    def compliance(self, graph: Graph) -> torch.Tensor:
        """The learned per-atom compliance C_i (Å²/eV, SPD), [N, 3, 3]."""
        return self._compliance(self.trunk(self.node_input(graph), graph))

    def _cell_compliance(self, x: torch.Tensor, atoms: torch.Tensor, graph: Graph) -> torch.Tensor:
        """c_cell per graph (> 0, in the cell rows' units), [G]: the cell readout, or without one the graph's mean
        atom compliance tr(C_i)/3."""
        if self.cell_head is None:
            trace = torch.diagonal(atoms, dim1=-2, dim2=-1).sum(-1, keepdim=True) / 3.0  # [N, 1]
            return scatter_mean(trace, graph.batch, graph.num_atoms_per_graph).squeeze(-1)
        b = 0.1 * scatter_mean(self.cell_head(x), graph.batch, graph.num_atoms_per_graph).squeeze(-1)  # [G]
        return self.step_size * torch.exp(b.clamp(-5.0, 5.0))

    def row_compliance(self, graph: Graph) -> torch.Tensor:
        """The initial inverse Hessian's blocks over the graph's rows (SPD, [n_rows, 3, 3]): C_i for atom rows, then
        c_cell·I for each graph's 3 cell rows when the cell relaxes."""
        if not graph.has_cell_rows:
            return self.compliance(graph)
        x = self.trunk(self.node_input(graph), graph)  # [N, hidden], once for the atoms' and the cell's blocks
        atoms = self._compliance(x)  # [N, 3, 3]
        c_cell = self._cell_compliance(x, atoms, graph).repeat_interleave(3)  # [3G]
        eye = torch.eye(3, dtype=atoms.dtype, device=atoms.device)
        return torch.cat([atoms, c_cell[:, None, None] * eye])

    def ungated(self, graph: Graph) -> torch.Tensor:
        """The bounded quasi-Newton displacement before the env gate, [n_rows, 3] (atoms Å, then cell rows)."""
        return quasi_newton_step(graph.row_forces(), graph.row_history(), self.row_compliance(graph),
                                 graph.row_batch(), graph.n_graphs, self.max_step, graph.n_atoms)


class ModelHessianActor(Actor):
    """Policy as L-BFGS on a learned sparse model Hessian (``network.actor_head = 'model-hessian'``)::

        d = H F,    then scaled as a whole so that the longest atom move is ≤ env.max_step

    H is the L-BFGS inverse-Hessian estimate of the remembered steps of the path history on the
    initial inverse Hessian ``s·P⁻¹`` (:func:`learner.quasi_newton.model_hessian_step`), with P the
    model Hessian (:class:`learner.quasi_newton.ModelHessian`) the network predicts::

        d_i = (1 / step_size) · exp(4·a_i)                      per atom (eV/Å², a_i a 0e output, zero at the start)
        α_e, β_e = unit · softplus(mlp(h_r + h_s, h_r ⊙ h_s, radial(|r_e|))) · envelope(|r_e|)   per edge

    h the trunk's invariant (0e) features of the edge's two atoms, radial the Bessel basis of the
    distance and envelope the trunk's smooth cutoff, so P changes continuously as atoms cross
    the cutoff. B_e = α_e I + β_e r̂r̂ᵀ is the form of a pair potential's Hessian block: how stiff
    the bond is along its direction and across it. With ``network.edge_vectors`` = K > 0 each block also gets
    K rank-one terms, B_e += Σ_k u_ek u_ekᵀ with u_ek = √unit · envelope(|r_e|) · Σ_c W_kc (v_s,c + v_r,c), v the
    trunk's 1o features of the edge's two atoms: the coupling a pair potential's form cannot hold (angular terms,
    neighbours' influence), still positive semi-definite and equivariant (u rotates with the structure, u uᵀ as a
    3×3 block must). W starts small (random, :data:`VECTOR_INIT`), not zero: u uᵀ has no gradient at u = 0.
    No gain measured in the demo (docs/RESULTS.md), so off in the presets. P is symmetric positive definite by
    construction, so every move goes downhill (up to the conjugate-gradient tolerance) and vanishes with the forces;
    coordinates held by ASE constraints (``graph.free``) are left out of the solve and never move.

    At initialisation the edge blocks are near zero (softplus of −4 times the unit: ~2 % of d) and
    d_i = 1/step_size, so an untrained actor is L-BFGS with Nocedal's scaling, the 'quasi-newton'
    head's start. What training adds is how atoms are coupled: the curvature that a per-atom
    compliance cannot see (learner/curvature.py supervises P with Hessian columns the expert
    actors measure; the TD3 and BC losses act on the move).

    With the cell (``env.relax_cell``; the graph's cell rows) P gets one more diagonal block per graph
    on the cell filter's 3 rows, ``d_cell·I`` with d_cell = (1 / step_size)·exp(4·b), b the graph's
    mean of a 0e readout (zero at the start), and the recursion runs over all rows, as for the
    'quasi-newton' head.
    """

    moves_cell = True
    DIAG_GAIN = 4.0
    """log d_i = DIAG_GAIN·a_i − log step_size: the diagonal starts at 1/step_size (70 eV/Å² in the presets) and
    must fall by a factor of 10–30 to a metal atom's own stiffness; the gain lets Adam's steps of about the
    learning rate per update get there in hundreds of updates, not thousands."""
    EDGE_UNIT = 10.0
    """Scale of the edge blocks α, β (eV/Å²): the order of a metal bond's stiffness."""
    EDGE_BIAS = -4.0
    """Initial bias of the edge MLP's output: softplus(−4)·unit ≈ 0.18 eV/Å² per edge."""
    VECTOR_INIT = 1e-2
    """Standard deviation of the rank-one terms' channel weights W at the start, over √channels: u uᵀ starts at
    about 1e-3 of the edges' α, so the untrained head is the pair form's to within that."""

    def __init__(self, cfg: NetworkConfig, env: EnvConfig) -> None:
        super().__init__(cfg, env)
        self.step_size = float(cfg.step_size)
        self.iterations = int(cfg.cg_iterations)
        self.n_scalars = int(cfg.channels)  # the trunk's 0e block comes first (blocks.hidden_irreps)
        self.irreps_head = o3.Irreps("1x0e")
        self.head = o3.Linear(self.trunk.irreps_out, self.irreps_head, biases=True)  # [N, hidden] → [N, 1]: a_i
        # the cell's diagonal: a per-atom invariant, mean-pooled per graph (built only when the cell relaxes, so a
        # checkpoint of a run without it keeps its parameter names)
        self.cell_head = o3.Linear(self.trunk.irreps_out, o3.Irreps("1x0e"), biases=True) if env.relax_cell else None
        for layer in (self.head, self.cell_head):  # d = 1/step_size at the start, whatever the trunk says
            for w in (layer.parameters() if layer is not None else ()):
                nn.init.zeros_(w)
        hidden = 2 * cfg.radial_hidden
        self.edge_mlp = nn.Sequential(nn.Linear(2 * self.n_scalars + cfg.num_basis, hidden), nn.SiLU(),
                                      nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.edge_mlp[-1].weight)
        nn.init.constant_(self.edge_mlp[-1].bias, self.EDGE_BIAS)
        self.vector_weight = None  # [K, channels]: only with network.edge_vectors (older checkpoints keep their names)
        if cfg.edge_vectors > 0:
            block = next(i for i, (_, ir) in enumerate(self.trunk.irreps_out) if ir == o3.Irrep("1o"))
            self.vector_slice = self.trunk.irreps_out.slices()[block]  # the trunk's 1o features, [N, channels·3]
            self.n_vectors = self.trunk.irreps_out[block].mul
            scale = self.VECTOR_INIT / math.sqrt(self.n_vectors)
            self.vector_weight = nn.Parameter(scale * torch.randn(int(cfg.edge_vectors), self.n_vectors))
        self.to(torch_dtype(cfg.dtype))

    def model_hessian_readout(self) -> list[nn.Parameter]:
        """The parameters that turn trunk features into the model Hessian (the diagonal heads, the edge MLP): the
        learner trains them at ``learner.curvature_lr``."""
        layers = [self.head, self.edge_mlp] + ([self.cell_head] if self.cell_head is not None else [])
        extra = [self.vector_weight] if self.vector_weight is not None else []
        return [p for layer in layers for p in layer.parameters()] + extra

    def _diagonal(self, readout: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """(1 / step_size)·exp(DIAG_GAIN·readout(x)), eV/Å², per row of x. [rows]"""
        return torch.exp((self.DIAG_GAIN * readout(x).squeeze(-1)).clamp(-10.0, 10.0)) / self.step_size

    def model_hessian(self, graph: Graph) -> ModelHessian:
        """The model Hessian P of every graph of the batch over its rows: the atoms, then 3 cell rows per graph when
        the cell relaxes (the graph's row order)."""
        x = self.trunk(self.node_input(graph), graph)  # [N, hidden]
        h = x[:, :self.n_scalars]  # [N, channels] invariants
        diag = self._diagonal(self.head, x)  # [N] eV/Å²
        free = graph.free
        if graph.has_cell_rows:
            if self.cell_head is None:  # a checkpoint trained without the cell: its atoms' mean diagonal
                pooled = scatter_mean(diag.unsqueeze(-1), graph.batch, graph.num_atoms_per_graph).squeeze(-1)
            else:
                pooled = self._diagonal(lambda v: scatter_mean(self.cell_head(v), graph.batch, graph.num_atoms_per_graph), x)
            diag = torch.cat([diag, pooled.repeat_interleave(3)])  # [n_rows]
            if free is not None:
                free = torch.cat([free, free.new_ones(3 * graph.n_graphs, 3)])
        geo = self.trunk.edges.geometry(graph)  # the trunk's edge geometry (computed once per batch)
        h_s, h_r = h.index_select(0, graph.edge_index[0]), h.index_select(0, graph.edge_index[1])  # [E, channels]
        feats = torch.cat([h_s + h_r, h_s * h_r, geo.basis], dim=-1)  # [E, 2c + num_basis]
        ab = self.EDGE_UNIT * nn.functional.softplus(self.edge_mlp(feats)) * geo.envelope.unsqueeze(-1)
        vectors = None
        if self.vector_weight is not None:
            v = x[:, self.vector_slice].reshape(-1, self.n_vectors, 3)  # [N, channels, 3]
            v_e = v.index_select(0, graph.edge_index[0]) + v.index_select(0, graph.edge_index[1])  # [E, channels, 3]
            gain = math.sqrt(self.EDGE_UNIT) * geo.envelope  # [E]
            vectors = torch.einsum("kc,eci->eki", self.vector_weight, v_e) * gain[:, None, None]  # [E, K, 3]
        return ModelHessian(diag=diag, edge_index=graph.edge_index, alpha=ab[:, 0], beta=ab[:, 1],
                            direction=geo.vectors / geo.length.unsqueeze(-1), free=free, vectors=vectors)

    def move(self, graph: Graph, hessian: ModelHessian) -> torch.Tensor:
        """The bounded L-BFGS move on ``hessian``, [n_rows, 3] (atoms Å, then cell rows)."""
        return model_hessian_step(graph.row_forces(), graph.row_history(), hessian, graph.row_batch(), graph.n_graphs,
                                  self.max_step, self.iterations, graph.n_atoms)

    def ungated(self, graph: Graph) -> torch.Tensor:
        """The bounded preconditioned L-BFGS displacement before the env gate, [n_rows, 3]."""
        return self.move(graph, self.model_hessian(graph))

    def forward_with_hessian(self, graph: Graph) -> tuple[torch.Tensor, ModelHessian]:
        """(displacement [n_rows, 3] after the env gate, the model Hessian it was computed on): one trunk pass for the
        TD3 actor loss and the curvature loss."""
        hessian = self.model_hessian(graph)
        d = self.move(graph, hessian)
        if self.env_gate is not None:
            d = d * self.action_scale(graph)[graph.row_batch()].unsqueeze(-1)
        return d, hessian


HEAD_CLASSES = {"free": Actor, "preconditioned": PreconditionedActor, "quasi-newton": QuasiNewtonActor,
                "model-hessian": ModelHessianActor}
"""The actor class of each ``network.actor_head``."""


def build_actor(cfg: NetworkConfig, env: EnvConfig) -> Actor:
    """The actor class ``network.actor_head`` names."""
    return HEAD_CLASSES[cfg.actor_head](cfg, env)


def initial_actor(config: RunConfig) -> Actor:
    """The actor every run of ``config`` (a ``RunConfig``) starts from: torch's global generator seeded with
    ``run.seed``, then :func:`build_actor`. The learner builds its actor this way first and its critic from the
    same stream next; :func:`learner.policy.untrained_policy` builds the same weights without moving that stream."""
    torch.manual_seed(config.run.seed)
    return build_actor(config.network, config.env)
