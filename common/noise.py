"""The one rule by which exploration noise (actors) and target-policy smoothing noise (learner) shrink
near a minimum: each atom's noise is multiplied by min(1, |F_i| / force_scale).

Near convergence a kick of the full σ alone would raise Fmax above the threshold, so the actors scale their
noise by the atom's force, and the TD target scales its smoothing noise the same way (otherwise it would value
moves no actor makes there). The function takes a numpy array or a torch tensor of forces alike.
"""
from __future__ import annotations

from typing import TypeVar

Array = TypeVar("Array")


def force_noise_factor(forces: Array, force_scale: float) -> Array:
    """min(1, |F_i| / ``force_scale``) per atom, shape [n_atoms, 1], for ``forces`` [n_atoms, 3] eV/Å
    (numpy or torch, returned as the same type); ``force_scale`` > 0 eV/Å."""
    return (((forces * forces).sum(-1, keepdims=True)) ** 0.5 / force_scale).clip(max=1.0)
