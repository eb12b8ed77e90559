"""Configuration of the networks and of the TD3 learner."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkConfig:
    env_input_dim: int = 0
    """Global env features fused late (0 = plain geometric model: no tail_mlp, no env gate)."""
    radius: float = 5.0
    """Neighbour cutoff, Å (the design notes suggest 6–7 Å on large cells)."""
    max_neighbors: int = 32
    """Neighbours kept per atom, nearest first (0 = no cap)."""
    num_layers: int = 3
    """Interaction (message-passing) layers, 2–6."""
    lmax: int = 1
    """Largest spherical-harmonic degree of edge features and hidden irreps."""
    channels: int = 16
    """Multiplicity of each irrep in the hidden features (scalars and vectors)."""
    num_basis: int = 8
    """Radial basis functions of the distance."""
    radial_hidden: int = 32
    """Hidden width of the radial MLP that gives tensor-product weights."""
    max_species: int = 100
    """Size of the species embedding table (atomic numbers up to this)."""
    avg_num_neighbors: float = 12.0
    """Messages summed at a receiver are divided by this (keeps feature scale independent of the radius)."""
    tail_hidden: int = 32
    """Hidden width of the small MLPs on env features (actor env gate, critic tail_mlp)."""
    max_step: float = 0.2
    """Bound on the norm of each atom's displacement, Å (equivariant squashing)."""
    per_atom_q: bool = False
    """Expose per-atom critic values whose sum is Q (per-atom credit assignment)."""
    dtype: str = "float32"
    """Torch dtype of the networks: 'float32' or 'float64'."""


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 256
    """Transitions per update."""
    gamma: float = 0.95
    """Discount factor."""
    tau: float = 0.005
    """Polyak averaging rate of the target networks."""
    actor_lr: float = 3e-4
    """Actor Adam learning rate."""
    critic_lr: float = 3e-4
    """Critic Adam learning rate."""
    policy_delay: int = 2
    """Critic updates per actor (and target) update."""
    target_noise: float = 0.02
    """Std of the target-policy smoothing noise, Å."""
    target_noise_clip: float = 0.05
    """Clip of the target-policy smoothing noise, Å."""
    lambda_dev: float = 1.0
    """Weight of the action-deviation penalty ‖π(s) − a_actual‖² in the actor loss."""
    bc_start: float = 1.0
    """Behaviour-cloning weight λ_bc at update 0 (expert items only)."""
    bc_end: float = 0.0
    """Behaviour-cloning weight at the end of its decay."""
    bc_decay_updates: int = 5000
    """Updates over which λ_bc decays linearly from bc_start to bc_end."""
    expert_fraction_start: float = 0.25
    """Share of each batch drawn from the expert table at update 0."""
    expert_fraction_end: float = 0.2
    """Share of each batch drawn from the expert table at the end of its schedule."""
    expert_fraction_decay_updates: int = 5000
    """Updates over which the expert share moves linearly from start to end."""
    beta_start: float = 0.4
    """Importance-sampling exponent β at update 0 (annealed to 1)."""
    beta_anneal_updates: int = 10000
    """Updates over which β goes linearly to 1."""
    priority_eps: float = 1e-3
    """ε in priorities |δ| + ε."""
    max_updates: int = 2000
    """Updates before training stops (0 = run until time_limit_s)."""
    time_limit_s: float = 0.0
    """Wall-clock limit of training in seconds (0 = none)."""
    publish_every: int = 10
    """Publish versioned weights to the actors every this many updates."""
    checkpoint_every: int = 200
    """Checkpoint every this many updates."""
    log_every: int = 10
    """Append a metrics.jsonl row every this many updates."""
    max_nonfinite: int = 20
    """Consecutive non-finite losses that stop the run."""
    normalize_actor_loss: bool = True
    """Scale −Q by mean|Q| and measure the penalties in units of network.max_step (TD3+BC), so λ_dev and λ_bc do not depend on the reward scale."""
    relative_bc: float = 0.005
    """δ (Å) of the relative behaviour-cloning error ‖π − a_BFGS‖² / (‖a_BFGS‖² + δ²) per graph (0 = absolute error in units of max_step)."""
    grad_clip: float = 10.0
    """Global gradient-norm clip (0 = none)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'."""
