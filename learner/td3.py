"""TD3 with action-deviation and behaviour-cloning terms, as pure functions of tensors.

Read top to bottom (after CleanRL's ``td3_continuous_action.py``)::

    a' = bound(π'(s') + clip(ε, −c, c))                      target policy smoothing
    y  = r + γ·(1 − terminated)·min(Q1'(s', a'), Q2'(s', a'))  truncation is not termination
                                                             n-step items: r = Σ_k γ^k r_k, γ → γ^n
    L_Q = mean_i w_i·[(Q1(s,a) − y)² + (Q2(s,a) − y)²]           w = importance weights
    every ``policy_delay`` updates:
    L_π = mean_g [ −Q1(s, π(s)) + λ_dev·‖π(s) − c(π(s))‖² + λ_bc·‖π(s) − a_expert‖²·[g ∈ expert] ]
          + λ_curv·L_curv(P)         a 'model-hessian' head's model Hessian P against measured Hessian columns
    other updates (with probes):  λ_curv·L_curv(P) alone, so the model Hessian learns at every update
    θ' ← τ·θ + (1 − τ)·θ'                                      Polyak averaging
    priority_i = (|δ1_i| + |δ2_i|)/2 + ε

c(·) is the environment's action correction (``common.correction``: per-atom cap, collisions
scaled back) applied to the actor's own proposal, held constant: the penalty is the distance
between what the actor proposes and what the environment would make of it, so the actor
learns moves that need no correction (the design notes' action-deviation penalty).

Actions are per-atom displacements [n_atoms, 3] (Å) of a batch of graphs, and when the cells
relax the generalised rows [n_rows, 3] (atom rows, then 3 cell rows per graph; the row → graph
index is ``graph.row_batch()``); per-graph quantities ([n_graphs]) come from averaging over each
graph's rows, so a 4-atom and a 64-atom structure weigh the same in a batch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.noise import force_noise_factor
from learner.curvature import CurvatureTargets, curvature_loss


@dataclass
class TD3Batch:
    """One sampled batch on the learner's device."""

    graph: object  # learner.graph.Graph of s
    next_graph: object  # learner.graph.Graph of s'
    action: Tensor  # [n_rows, 3] a_pred the actor proposed (what Q is learned for); rows as in graph.row_batch()
    actual_move: Tensor  # [n_rows, 3] a_actual the environment applied (logged as charts/actual_move)
    expert_action: Tensor  # [n_rows, 3] a_expert (zeros where none)
    is_expert: Tensor  # [n_graphs] bool, item came from the expert table
    reward: Tensor  # [n_graphs]
    terminated: Tensor  # [n_graphs] float 0/1
    weight: Tensor  # [n_graphs] importance weights
    n_steps: Tensor | None = None  # [n_graphs] environment steps each item spans (None: 1); bootstraps with γ^n
    row_batch: Tensor | None = None  # [n_rows] graph of each action row (None: graph.batch, atoms only)
    next_row_forces: Tensor | None = None  # [n_rows, 3] generalised forces of s' per row (None: next_graph.forces)
    curvature: CurvatureTargets | None = None  # Hessian columns the expert actors measured (learner/curvature.py)


def per_graph_mean(values: Tensor, batch: Tensor, n_graphs: int) -> Tensor:
    """Mean of per-atom ``values`` [n_atoms] over each graph → [n_graphs]."""
    sums = torch.zeros(n_graphs, dtype=values.dtype, device=values.device).index_add_(0, batch, values)
    counts = torch.zeros(n_graphs, dtype=values.dtype, device=values.device).index_add_(0, batch, torch.ones_like(values))
    return sums / counts.clamp_min(1.0)


def bound_norm(displacement: Tensor, max_step: float) -> Tensor:
    """Shorten each atom's vector to at most ``max_step`` Å, keeping its direction (equivariant)."""
    norm = displacement.norm(dim=-1, keepdim=True)  # [n_atoms, 1]
    return displacement * torch.clamp(max_step / norm.clamp_min(1e-12), max=1.0)


def target_action(policy_next: Tensor, noise_std: float, noise_clip: float, max_step: float,
                  generator: torch.Generator | None = None, forces: Tensor | None = None,
                  force_scale: float = 0.0) -> Tensor:
    """Target policy smoothing: π'(s') plus clipped Gaussian noise, bounded like the actor's output.

    With ``forces`` ([n_atoms, 3] eV/Å of s') and ``force_scale`` > 0, each atom's noise is scaled by
    min(1, |F_i| / force_scale), as the actors scale their exploration noise: near a minimum a kick of
    ``noise_std`` alone would raise Fmax above the threshold, so unscaled noise would make the target value the
    critic's guess for moves no actor ever makes there."""
    noise = torch.randn(policy_next.shape, generator=generator, dtype=policy_next.dtype, device="cpu").to(policy_next.device)
    noise = (noise * noise_std).clamp(-noise_clip, noise_clip)
    if forces is not None and force_scale > 0:
        noise = noise * force_noise_factor(forces, force_scale)  # [n_atoms, 1]
    return bound_norm(policy_next + noise, max_step)


def td_target(reward: Tensor, terminated: Tensor, q1_next: Tensor, q2_next: Tensor, gamma: float | Tensor) -> Tensor:
    """y = r + γ·(1 − terminated)·min(Q1', Q2'); no gradient flows through it. For n-step items ``reward`` is
    Σ_k γ^k r_k and ``gamma`` is γ^n per item."""
    return (reward + gamma * (1.0 - terminated) * torch.minimum(q1_next, q2_next)).detach()


def critic_loss(q1: Tensor, q2: Tensor, target: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Importance-weighted squared TD errors of both critics; returns (loss, |δ| averaged over the twins)."""
    d1, d2 = q1 - target, q2 - target  # [n_graphs]
    loss = (weight * d1.pow(2)).mean() + (weight * d2.pow(2)).mean()
    return loss, 0.5 * (d1.abs() + d2.abs()).detach()


def actor_loss(q1_pi: Tensor, pi: Tensor, corrected: Tensor, expert_action: Tensor, is_expert: Tensor,
               batch: Tensor, lambda_dev: float, lambda_bc: float, q_norm: float | Tensor = 1.0,
               length_unit: float = 1.0, relative_bc: float = 0.0, q_weight: float = 1.0) -> tuple[Tensor, dict[str, Tensor]]:
    """−w_Q·Q1(s, π(s))/q_norm + λ_dev·‖π(s) − corrected‖² + λ_bc·‖π(s) − a_expert‖² on expert items only
    (w_Q = ``q_weight``, 1 in TD3+BC; 0 leaves the critic out of the actor's gradient, an ablation).

    ``corrected`` is c(π(s)), the environment's correction of the proposal (no gradient).

    Distances in the deviation penalty are measured in ``length_unit`` (Å by default). With
    ``q_norm = mean|Q1|`` and ``length_unit = max_step`` both terms are O(1), as in TD3+BC
    (Fujimoto & Gu 2021), so λ_dev keeps its meaning whatever the reward scale.
    ``relative_bc = δ > 0`` measures the BC error relative to the expert step of the same
    graph, ‖π − a_e‖² / (‖a_e‖² + n·δ²): BFGS steps near a minimum are 100× shorter than
    the first ones, and an absolute error would ignore exactly the steps that finish a
    relaxation.
    """
    n_graphs = q1_pi.shape[0]
    u2 = length_unit * length_unit
    dev = per_graph_mean((pi - corrected.detach()).pow(2).sum(-1), batch, n_graphs) / u2  # [n_graphs]
    err = per_graph_mean((pi - expert_action).pow(2).sum(-1), batch, n_graphs)  # [n_graphs] Å²
    if relative_bc > 0:
        bc = err / (per_graph_mean(expert_action.pow(2).sum(-1), batch, n_graphs) + relative_bc**2)
    else:
        bc = err / u2
    bc = bc * is_expert.to(pi.dtype)
    loss = (-q_weight * q1_pi / q_norm + lambda_dev * dev + lambda_bc * bc).mean()
    n_exp = is_expert.sum().clamp_min(1)
    return loss, {"q_pi": q1_pi.mean().detach(), "deviation": dev.mean().detach(), "bc": (bc.sum() / n_exp).detach()}


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """θ' ← τ·θ + (1 − τ)·θ' for every parameter (buffers are copied)."""
    for p_t, p in zip(target.parameters(), source.parameters()):
        p_t.mul_(1.0 - tau).add_(p, alpha=tau)
    for b_t, b in zip(target.buffers(), source.buffers()):
        b_t.copy_(b)


def new_priorities(td_abs: Tensor, eps: float) -> Tensor:
    """Replay priorities |δ| + ε."""
    return td_abs + eps


@dataclass
class TD3Hyper:
    gamma: float
    tau: float
    target_noise: float
    target_noise_clip: float
    max_step: float
    lambda_dev: float
    grad_clip: float
    normalize: bool = True  # −Q scaled by mean|Q|, penalties in units of max_step (TD3+BC)
    relative_bc: float = 0.0  # δ (Å) of the relative BC error; 0 = absolute
    target_noise_force_scale: float = 0.0  # eV/Å; > 0: target noise per atom × min(1, |F_i| / this)
    curvature_weight: float = 0.0  # λ_curv of the curvature loss (heads with a model Hessian, batches with probes)
    q_weight: float = 1.0  # weight of −Q1(s, π(s)) in the actor loss (0: the actor learns from BC, deviation, curvature)


def _clipped_step(module: nn.Module, opt: torch.optim.Optimizer, grad_clip: float) -> bool:
    """Clip the gradient norm (when ``grad_clip`` > 0) and step; a non-finite gradient is dropped, not applied
    (it would make every weight NaN). Returns whether the step was taken."""
    params = [p for p in module.parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def td3_update(b: TD3Batch, actor: nn.Module, critic: nn.Module, actor_target: nn.Module, critic_target: nn.Module,
               actor_opt: torch.optim.Optimizer, critic_opt: torch.optim.Optimizer, h: TD3Hyper, lambda_bc: float,
               update_actor: bool, generator: torch.Generator | None = None,
               correct: Callable[[object, Tensor], Tensor] | None = None) -> tuple[dict[str, float], Tensor]:
    """One TD3 update. ``critic``/``critic_target`` return (Q1, Q2); ``correct(graph, proposal)`` is the
    environment's action correction for the deviation penalty (None: no correction, so no penalty).
    Returns (scalars to log, new |δ| per item)."""
    logs, td_abs = _critic_step(b, critic, actor_target, critic_target, critic_opt, h, generator)
    if "nonfinite" in logs:
        return logs, td_abs
    if update_actor:
        logs.update(_actor_step(b, actor, critic, actor_target, critic_target, actor_opt, h, lambda_bc, correct))
    elif b.curvature is not None and h.curvature_weight > 0 and hasattr(actor, "model_hessian"):
        # between the delayed TD3 actor updates the model Hessian still learns from the measured curvature
        logs.update(_curvature_step(b, actor, actor_opt, h))
    return logs, td_abs


def _critic_step(b: TD3Batch, critic: nn.Module, actor_target: nn.Module, critic_target: nn.Module,
                 critic_opt: torch.optim.Optimizer, h: TD3Hyper,
                 generator: torch.Generator | None) -> tuple[dict[str, float], Tensor]:
    """The twin critics' step towards the smoothed target y; (logs, |δ| per item). A non-finite critic loss takes
    no step and says so (``nonfinite``)."""
    with torch.no_grad():
        a_next = target_action(actor_target(b.next_graph), h.target_noise, h.target_noise_clip, h.max_step, generator,
                               forces=b.next_graph.forces if b.next_row_forces is None else b.next_row_forces,
                               force_scale=h.target_noise_force_scale)
        q1_next, q2_next = critic_target(b.next_graph, a_next)
        y = td_target(b.reward, b.terminated, q1_next, q2_next, h.gamma if b.n_steps is None else h.gamma ** b.n_steps)
    q1, q2 = critic(b.graph, b.action)
    loss_q, td_abs = critic_loss(q1, q2, y, b.weight)
    if not torch.isfinite(loss_q):
        return {"losses/critic": float(loss_q), "nonfinite": 1.0}, td_abs
    critic_opt.zero_grad(set_to_none=True)
    loss_q.backward()
    if h.grad_clip > 0:
        nn.utils.clip_grad_norm_(critic.parameters(), h.grad_clip)
    critic_opt.step()
    return {"losses/critic": float(loss_q.detach()), "charts/q_value": float(q1.detach().mean()),
            "charts/td_error": float(td_abs.mean()),
            "charts/target": float(y.mean()), "charts/batch_reward": float(b.reward.mean())}, td_abs


def _actor_step(b: TD3Batch, actor: nn.Module, critic: nn.Module, actor_target: nn.Module, critic_target: nn.Module,
                actor_opt: torch.optim.Optimizer, h: TD3Hyper, lambda_bc: float,
                correct: Callable[[object, Tensor], Tensor] | None) -> dict[str, float]:
    """The delayed actor step (:func:`actor_loss`, plus the curvature loss of a model-Hessian head with measured
    curvature), then Polyak averaging of both targets; its logs."""
    logs: dict[str, float] = {}
    model = None
    if b.curvature is not None and h.curvature_weight > 0 and hasattr(actor, "forward_with_hessian"):
        pi, model = actor.forward_with_hessian(b.graph)
    else:
        pi = actor(b.graph)
    corrected = correct(b.graph, pi.detach()) if correct is not None else pi.detach()
    q1_pi = critic.q1(b.graph, pi) if hasattr(critic, "q1") else critic(b.graph, pi)[0]
    q_norm = q1_pi.abs().mean().detach().clamp_min(1e-6) if h.normalize else 1.0
    rows = b.graph.batch if b.row_batch is None else b.row_batch
    loss_pi, parts = actor_loss(q1_pi, pi, corrected, b.expert_action, b.is_expert, rows,
                                h.lambda_dev, lambda_bc, q_norm=q_norm,
                                length_unit=h.max_step if h.normalize else 1.0, relative_bc=h.relative_bc,
                                q_weight=h.q_weight)
    if model is not None:
        loss_curv = curvature_loss(model, b.curvature)
        loss_pi = loss_pi + h.curvature_weight * loss_curv
        logs["losses/curvature"] = float(loss_curv.detach())
    if torch.isfinite(loss_pi):
        actor_opt.zero_grad(set_to_none=True)
        loss_pi.backward()
        if not _clipped_step(actor, actor_opt, h.grad_clip):
            logs["nonfinite"] = 1.0
        polyak_update(actor_target, actor, h.tau)
        polyak_update(critic_target, critic, h.tau)
    else:
        logs["nonfinite"] = 1.0
    logs.update({"losses/actor": float(loss_pi.detach()), "losses/deviation": float(parts["deviation"]),
                 "losses/bc": float(parts["bc"]), "charts/q_pi": float(parts["q_pi"])})
    return logs


def _curvature_step(b: TD3Batch, actor: nn.Module, actor_opt: torch.optim.Optimizer, h: TD3Hyper) -> dict[str, float]:
    """A step of the model Hessian alone on the curvature loss (between the delayed actor steps); its log."""
    loss_curv = curvature_loss(actor.model_hessian(b.graph), b.curvature)
    if torch.isfinite(loss_curv):
        actor_opt.zero_grad(set_to_none=True)
        (h.curvature_weight * loss_curv).backward()
        _clipped_step(actor, actor_opt, h.grad_clip)
    return {"losses/curvature": float(loss_curv.detach())}
