"""What bounds the model-Hessian head: its move on exact curvature, in variants; prints one JSON object.

    python bench/head_ceiling.py [--structures suite|suite-val] [--config configs/quality.toml]
                                 [--variants model-fit,exact,...] [--limit N]

Each variant is an optimizer that takes one step per force call from the finite-difference Hessian of
the current structure (its Hessian calls are not counted: these are ceilings, not competitors), run
alone through :class:`~actors.env.RelaxEnv` and judged like a teacher of ``bench/relax_quality.py
--teachers`` (`relaxrl eval`'s rule, BFGS and BFGSLineSearch as the classical reference). Every move
is bounded as the head's is (``env.max_step`` on the longest atom move). The variants:

- ``model-fit``: the 'model-hessian' teacher as the presets use it: the head's pair form
  (α I + β r̂r̂ᵀ per edge, α, β ≥ 0, a per-atom diagonal, a pair's periodic images fitted together) fitted to
  the Hessian, as the initial inverse
  Hessian of the L-BFGS recursion over the path memory. What the head does with a perfect network.
- ``model-fit-nomemory``: the same fitted model alone (P⁻¹F, no path memory).
- ``psd-blocks``: the full 3×3 pair blocks, each projected onto its positive semi-definite part, with
  full 3×3 atom blocks, in the same recursion (the richer positive-definite-by-construction form).
- ``exact-memory``: the whole Hessian with its eigenvalues made positive (|λ|, at least
  ``expert.teacher_min_curvature``) as the recursion's initial inverse Hessian.
- ``exact``: the same, no memory: the saddle-free Newton step (the 'newton' teacher).
- ``graph-exact``: only the Hessian's blocks between atoms of the head's neighbour graph
  (``network.radius``, ``network.max_neighbors``), made positive the same way, no memory.
- ``graph-exact-tcg``: those blocks as they are (indefinite), solved by truncated conjugate gradients
  (Steihaug: stop at negative curvature or at a trust radius of ``env.max_step``·√n), no memory.

- ``graph-noise-0.1``, ``graph-noise-0.3``: ``graph-exact`` with every 3×3 block B changed by 10 % or 30 % of
  |B| in a random direction (seeded), anew at every step: how exact a learned Hessian must be before the
  Newton step without memory pays.

- ``<variant>-energy``: the same, and where the energy of the current state is above that of the last
  accepted one, the move goes back half way toward the accepted state instead (no Hessian used); a state at
  or below it is accepted. It uses only the energies the counted force calls return: what a policy that
  sees its last energy change could learn, and what BFGSLineSearch's energy check does.

``--memory K`` keeps only the K newest remembered steps of the path (default: all of ``env.history_steps``).
Prints per variant: converged, success, force calls relative to BFGS's where both converged, the
structures missed. ``--limit N`` keeps the first N structures, ``--quick`` the first 4 (`make bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from relax_quality import teacher_runs  # noqa: E402

from actors.expert import ModelHessianTeacher  # noqa: E402
from actors.hessian import full_hessian  # noqa: E402
from common.config import MAX_HESSIAN_ATOMS, load_config  # noqa: E402
from common.observation import HISTORY_DIM  # noqa: E402
from learner.quasi_newton import bounded_move, fit_model_hessian, model_hessian_step, pair_block_targets  # noqa: E402
from relaxrl.eval_cli import DEFAULT_STEPS, SET_STEPS, set_structures  # noqa: E402
from relaxrl.evaluate import evaluate  # noqa: E402

BASE_VARIANTS = ("model-fit", "model-fit-nomemory", "psd-blocks", "exact-memory", "exact", "graph-exact", "graph-exact-tcg",
                 "graph-noise-0.1", "graph-noise-0.3")
VARIANTS = BASE_VARIANTS + tuple(f"{v}-energy" for v in BASE_VARIANTS)
"""Each base variant, and with ``-energy`` the same with a step back after an energy rise (module docstring)."""


class DenseModel:
    """A dense positive-definite model Hessian with the solve interface ``model_hessian_step`` uses."""

    def __init__(self, matrix: torch.Tensor, free: torch.Tensor | None):
        self.matrix, self.free = matrix, free

    def solve(self, b: torch.Tensor, batch: torch.Tensor, n_graphs: int, iterations: int, rtol=None) -> torch.Tensor:
        squeeze = b.dim() == 2
        x = b.unsqueeze(-1) if squeeze else b  # [n, 3, R]
        n, rhs = x.shape[0], x.reshape(3 * x.shape[0], -1)
        keep = self.free.reshape(-1).bool() if self.free is not None else torch.ones(3 * n, dtype=torch.bool)
        out = torch.zeros_like(rhs)
        out[keep] = torch.linalg.solve(self.matrix[keep][:, keep], rhs[keep])
        out = out.reshape(x.shape)
        return out.squeeze(-1) if squeeze else out


def positive(matrix: torch.Tensor, floor: float) -> torch.Tensor:
    """The symmetric matrix with every eigenvalue replaced by max(|λ|, floor)."""
    w, v = torch.linalg.eigh(0.5 * (matrix + matrix.T))
    return (v * w.abs().clamp_min(floor)) @ v.T


def on_graph(full: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """The Hessian's blocks between atoms joined by an edge (either direction) and the atoms' own blocks; zero elsewhere."""
    n = full.shape[0] // 3
    keep = torch.eye(n, dtype=torch.bool)
    keep[edge_index[0], edge_index[1]] = True
    keep[edge_index[1], edge_index[0]] = True
    mask = keep.repeat_interleave(3, 0).repeat_interleave(3, 1)
    kept = full * mask
    return 0.5 * (kept + kept.T)


def psd_blocks(full: torch.Tensor, edge_index: torch.Tensor, floor: float) -> torch.Tensor:
    """Σ_e ½(e_r − e_s)(e_r − e_s)ᵀ ⊗ B_e + Σ_i D_i: B_e the PSD part of the symmetric −H_rs (shared among the
    periodic images of a pair), D_i what is left of H_ii with its eigenvalues at least ``floor``."""
    n = full.shape[0] // 3
    blocks, target = pair_block_targets(full, edge_index)
    snd, rcv = edge_index[0], edge_index[1]
    w, v = torch.linalg.eigh(target)
    b = 0.5 * (v * w.clamp_min(0.0).unsqueeze(-2)) @ v.transpose(-1, -2)  # [E, 3, 3], each direction carries half
    b = b * (snd != rcv).to(b.dtype)[:, None, None]
    model = torch.zeros(n, n, 3, 3, dtype=full.dtype)
    model.index_put_((rcv, rcv), b, accumulate=True)
    model.index_put_((snd, snd), b, accumulate=True)
    model.index_put_((rcv, snd), -b, accumulate=True)
    model.index_put_((snd, rcv), -b, accumulate=True)
    idx = torch.arange(n)
    left = blocks[idx, idx] - model[idx, idx]
    w, v = torch.linalg.eigh(0.5 * (left + left.transpose(-1, -2)))
    model[idx, idx] += (v * w.clamp_min(floor).unsqueeze(-2)) @ v.transpose(-1, -2)
    return model.permute(0, 2, 1, 3).reshape(3 * n, 3 * n)


def block_noise(matrix: torch.Tensor, rel: float, rng: np.random.Generator) -> torch.Tensor:
    """The matrix with every non-zero 3×3 block B changed by rel·|B|·G/|G|, G a Gaussian 3×3, kept symmetric."""
    n = matrix.shape[0] // 3
    blocks = matrix.reshape(n, 3, n, 3).permute(0, 2, 1, 3)
    g = torch.as_tensor(rng.standard_normal((n, n, 3, 3)))
    g = g / g.norm(dim=(-2, -1), keepdim=True)
    noisy = blocks + rel * blocks.norm(dim=(-2, -1), keepdim=True) * g
    noisy = noisy.permute(0, 2, 1, 3).reshape(3 * n, 3 * n)
    return 0.5 * (noisy + noisy.T)


def truncated_cg(matrix: torch.Tensor, rhs: torch.Tensor, radius: float, iterations: int = 500,
                 rtol: float = 1e-6) -> torch.Tensor:
    """Steihaug's truncated conjugate gradients on matrix·z = rhs (matrix may be indefinite): the CG iterate,
    or where a direction of non-positive curvature or the trust radius is met, the point on the radius."""
    z, r = torch.zeros_like(rhs), rhs.clone()
    d, rr = r.clone(), r @ r
    start = torch.sqrt(rr)
    for _ in range(iterations):
        md = matrix @ d
        curvature = d @ md
        if curvature <= 0 or (z + (rr / curvature) * d).norm() >= radius:
            a, b, c = d @ d, 2.0 * (z @ d), z @ z - radius * radius
            return z + ((-b + torch.sqrt(b * b - 4.0 * a * c)) / (2.0 * a)) * d
        step = rr / curvature
        z, r = z + step * d, r - step * md
        rr_new = r @ r
        if torch.sqrt(rr_new) < rtol * start:
            break
        d, rr = r + (rr_new / rr) * d, rr_new
    return z


class CeilingTeacher(ModelHessianTeacher):
    """The model-Hessian teacher with the step of one variant (module docstring)."""

    def __init__(self, variant: str, memory: int | None, **kwargs):
        self.energy_check = variant.endswith("-energy")
        self.variant, self.memory = variant.removesuffix("-energy"), memory
        super().__init__(**kwargs)

    def reset(self) -> None:
        super().reset()
        self.accepted: tuple[float, np.ndarray] | None = None  # (energy eV, positions Å) of the last accepted state
        self.rng = np.random.default_rng(0)

    def action(self, obs) -> np.ndarray:
        if self.energy_check and self.accepted is not None and obs.energy > self.accepted[0]:
            return 0.5 * (self.accepted[1] - np.asarray(obs.positions, dtype=np.float64))  # half way back
        if self.energy_check:
            self.accepted = (float(obs.energy), np.array(obs.positions, dtype=np.float64))
        return super().action(obs)

    def step(self, hessian: np.ndarray, obs) -> np.ndarray:
        n = obs.n_atoms
        full = torch.as_tensor(full_hessian(hessian, self._free))
        mask = self._free.reshape(-1, 3)
        free = None if mask.all() else torch.as_tensor(mask, dtype=torch.float64)
        ei, vectors = (torch.as_tensor(x) for x in self.edges(obs))
        forces = torch.as_tensor(obs.forces, dtype=torch.float64)
        batch = torch.zeros(n, dtype=torch.int64)
        history = torch.as_tensor(obs.history if obs.history is not None else np.zeros((n, HISTORY_DIM)), dtype=torch.float64).clone()
        if self.memory is not None:
            history[:, 6 * self.memory:] = 0.0  # an all-zero pair fails the curvature test and is skipped
        if self.variant.endswith("nomemory") or self.variant == "exact" or self.variant.startswith("graph-"):
            history = torch.zeros_like(history)
        if self.variant == "graph-exact-tcg":
            keep = torch.as_tensor(mask.reshape(-1))
            z = torch.zeros(3 * n, dtype=torch.float64)
            moved = max(int(keep.sum()) // 3, 1)
            z[keep] = truncated_cg(on_graph(full, ei)[keep][:, keep], forces.reshape(-1)[keep], self.maxstep * moved ** 0.5)
            d = bounded_move(z.reshape(n, 3), batch, 1, self.maxstep, n)
        else:
            model = self._model(full, ei, vectors, free)
            d = model_hessian_step(forces, history, model, batch, 1, self.maxstep, self.CG_ITERATIONS)
        d = d.numpy()
        d[~mask] = 0.0
        return d

    def _model(self, full: torch.Tensor, ei: torch.Tensor, vectors: torch.Tensor, free: torch.Tensor | None):
        if self.variant.startswith("model-fit"):
            return fit_model_hessian(full, ei, vectors, free, self.min_curvature)
        if self.variant == "psd-blocks":
            return DenseModel(psd_blocks(full, ei, self.min_curvature), free)
        if self.variant in ("exact", "exact-memory"):
            return DenseModel(positive(full, self.min_curvature), free)
        if self.variant == "graph-exact":
            return DenseModel(positive(on_graph(full, ei), self.min_curvature), free)
        if self.variant.startswith("graph-noise-"):
            noisy = block_noise(on_graph(full, ei), float(self.variant.rsplit("-", 1)[1]), self.rng)
            return DenseModel(positive(noisy, self.min_curvature), free)
        raise ValueError(f"unknown variant {self.variant!r}: one of {', '.join(VARIANTS)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--structures", choices=("suite", "suite-val"), default="suite", help="the suite or its validation draw")
    p.add_argument("--config", default=str(ROOT / "configs" / "quality.toml"),
                   help="the env (max_step, history_steps), network graph and curvature floor to use")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--memory", type=int, default=None, metavar="K", help="keep only the K newest remembered steps")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the first N structures")
    p.add_argument("--quick", action="store_true", help="the first 4 structures (make bench)")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    cfg = load_config(args.config)
    structures = set_structures(args.structures, cfg, 0, cfg.env.calculator, cfg.env.calculator_kwargs)
    limit = 4 if args.quick else args.limit
    if limit:
        structures = dict(list(structures.items())[:limit])
    steps = SET_STEPS.get(args.structures, DEFAULT_STEPS)
    t0 = time.perf_counter()
    report = evaluate(structures, "bfgs,bfgsls", fmax=0.05, steps=steps, calculator=cfg.env.calculator,
                      calculator_kwargs=cfg.env.calculator_kwargs, policy=None, progress=False)

    def build(env) -> CeilingTeacher:
        return CeilingTeacher(variant, args.memory, env=env, maxstep=cfg.env.max_step,
                              min_curvature=cfg.expert.teacher_min_curvature, max_atoms=MAX_HESSIAN_ATOMS, network=cfg.network)

    out: dict = {"benchmark": "head_ceiling", "structures": args.structures, "n_structures": len(structures),
                 "config": str(args.config), "memory": args.memory, "steps": steps, "variants": {}}
    for variant in variants:
        start = time.perf_counter()
        out["variants"][variant] = {**teacher_runs(variant, structures, report, cfg, steps, build=build),
                                    "wall_time_s": round(time.perf_counter() - start, 1)}
        print(variant, json.dumps(out["variants"][variant]), file=sys.stderr, flush=True)
    out["wall_time_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
