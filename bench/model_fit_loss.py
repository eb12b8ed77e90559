"""How well the model-Hessian head's pair form can fit the true curvature; prints one JSON object.

    python bench/model_fit_loss.py [--structures suite|suite-val] [--config configs/quality.toml] [--quick]

For each structure of the set (at its start positions, at most ``--max-atoms`` atoms) the finite-difference
Hessian (EMT), the pair-form model Hessian fitted to it (:func:`learner.quasi_newton.fit_model_hessian`, what
the 'model-hessian' teacher moves with and what a perfect network would predict) and that fit's curvature loss
(:func:`learner.curvature.curvature_loss`, the learner's loss, with every free atom probed): the floor of
the loss for this head's form. Two fits side by side: ``joint`` (a pair's periodic images fitted together, the
teacher since 2026-12-06) and ``one_by_one`` (each image alone to an equal share of its pair's block, the
teacher before). Per structure and per kind (clusters, bulk, slabs, ...), and the mean. ``--quick``: the
first structure of each kind with at most 12 atoms (`make bench`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from actors.calculators import make_calculator  # noqa: E402
from actors.expert import head_edges  # noqa: E402
from actors.hessian import columns_of, finite_difference_hessian, free_coordinates, full_hessian  # noqa: E402
from common.config import load_config  # noqa: E402
from learner.curvature import curvature_loss, curvature_targets  # noqa: E402
from learner.quasi_newton import fit_model_hessian  # noqa: E402
from relaxrl.eval_cli import set_structures  # noqa: E402


def fit_losses(atoms, calc, network, floor: float) -> dict[str, float]:
    """The curvature loss of the joint and the one-by-one pair-form fit to ``atoms``' Hessian, every free atom probed."""
    free = free_coordinates(atoms)
    measured = finite_difference_hessian(atoms, calc, free)
    hessian = full_hessian(measured, free)
    ei, vectors = head_edges(atoms.get_positions(), np.asarray(atoms.cell, dtype=np.float64), atoms.pbc, network)
    vectors = torch.as_tensor(vectors)
    mask = free.reshape(-1, 3)
    held = None if mask.all() else torch.as_tensor(mask, dtype=torch.float64)
    probe = np.where(mask.all(1))[0]
    targets = curvature_targets([(probe, columns_of(measured, free, probe))], [len(atoms)])
    out = {}
    for name, joint in (("joint", True), ("one_by_one", False)):
        model = fit_model_hessian(torch.as_tensor(hessian), torch.as_tensor(ei), vectors, held, floor, joint_images=joint)
        out[name] = round(float(curvature_loss(model, targets)), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--structures", choices=("suite", "suite-val"), default="suite")
    p.add_argument("--config", default=str(ROOT / "configs" / "quality.toml"), help="the network graph and curvature floor")
    p.add_argument("--max-atoms", type=int, default=40, help="skip larger structures (a Hessian costs 6n force calls)")
    p.add_argument("--quick", action="store_true", help="the first structure of each kind with at most 12 atoms")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    calc = make_calculator(cfg.env.calculator, cfg.env.calculator_kwargs)
    structures = set_structures(args.structures, cfg, 0, cfg.env.calculator, cfg.env.calculator_kwargs)
    t0 = time.perf_counter()
    per: dict[str, dict] = {}
    kinds: dict[str, list] = defaultdict(list)
    for name, atoms in structures.items():
        kind = name.rsplit("-", 2)[0]
        if len(atoms) > (12 if args.quick else args.max_atoms) or (args.quick and kind in kinds):
            continue
        per[name] = {"n_atoms": len(atoms), **fit_losses(atoms, calc, cfg.network, cfg.expert.teacher_min_curvature)}
        kinds[kind].append(per[name])
    mean = {fit: round(float(np.mean([r[fit] for r in per.values()])), 4) for fit in ("joint", "one_by_one")}
    by_kind = {k: {fit: round(float(np.mean([r[fit] for r in rows])), 4) for fit in ("joint", "one_by_one")}
               for k, rows in kinds.items()}
    print(json.dumps({"benchmark": "model_fit_loss", "structures": args.structures, "n_structures": len(per),
                      "mean": mean, "by_kind": by_kind, "per_structure": per,
                      "wall_time_s": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
