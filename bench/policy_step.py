"""What one policy step costs next to one CHGNet force call on the same cell; prints one JSON object.

    .venv/bin/python bench/policy_step.py [--quick] [--threads 1] [--sizes 8,64,256,512] [--config configs/alfe.toml]
                                          [--structure si|fe]

With a real potential the wall time of a relaxation is its force calls times a force call plus its
steps times a policy step, so the policy's saving in force calls is time saved only while its step is
a small fraction of a force call. For rattled supercells of each size (8, 64, 256, 512 atoms; ``--structure si``: diamond
Si, about 29 neighbours within CHGNet's 5 Å, ``fe``: bcc Fe, about 50, so every graph is larger; periodic,
so the cell relaxes too) this measures, in one process with ``torch.set_num_threads(--threads)`` for both:

  ``chgnet_call_s``       one CHGNet 0.3.0 calculation of energy, forces and stress (the baseline:
                          what every optimizer pays per force call), median over repeats;
  ``policy_step_s``       one ``RLOptimizer`` policy step on the atoms with the forces already known:
                          observation, neighbour list, the actor's forward, the move's correction
                          (the config's untrained agent: the ``alfe`` preset's quasi-Newton head);
  ``policy_step_cell_s``  the same on ``FrechetCellFilter(atoms)`` (atoms and cell rows);
  ``ratio`` / ``ratio_cell``  policy step over force call (issue 25's target: ≤ 0.10 at 64 atoms and more).

Everything runs on the CPU; ``--device cuda`` runs CHGNet and the policy on the GPU where one is
visible (``cuda`` is reported as unavailable otherwise). ``--quick``: 8 and 64 atoms, one repeat.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy/scipy (the cell filter's 3×3 maths) single-threaded
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.calculator import all_changes  # noqa: E402

from actors.calculators import make_calculator  # noqa: E402
from common.config import load_config  # noqa: E402
from learner.policy import Policy  # noqa: E402
from relaxrl.optimizer import RLOptimizer  # noqa: E402

SUPERCELLS = {
    "si": (lambda: bulk("Si", "diamond", a=5.43, cubic=True), {8: (1, 1, 1), 64: (2, 2, 2), 256: (4, 4, 2), 512: (4, 4, 4)}),
    "fe": (lambda: bulk("Fe", "bcc", a=2.87, cubic=True), {8: (2, 2, 1), 64: (4, 4, 2), 256: (8, 4, 4), 512: (8, 8, 4)}),
}
"""Conventional cell and its repeats for each size, per ``--structure``."""


def supercell(structure: str, n_atoms: int, seed: int = 0):
    build, reps = SUPERCELLS[structure]
    if n_atoms not in reps:
        raise SystemExit(f"--sizes: {n_atoms} atoms is not one of {sorted(reps)}")
    atoms = build() * reps[n_atoms]
    atoms.rattle(0.05, seed=seed)
    return atoms


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(structure: str, n_atoms: int, policy: Policy, calc_kwargs: dict, device: str, repeats: int) -> dict:
    calc = make_calculator("chgnet", {**calc_kwargs, "device": device})
    atoms = supercell(structure, n_atoms)

    def force_call():
        calc.reset()
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)

    out = {"n_atoms": n_atoms, "chgnet_call_s": timed(force_call, repeats)}
    for key, relax_cell in (("policy_step_s", False), ("policy_step_cell_s", True)):
        a = atoms.copy()
        a.calc = calc
        opt = RLOptimizer(a, policy=policy, logfile=None, relax_cell=relax_cell)
        opt.optimizable.get_gradient()  # the force call the step is decided on, done before the clock starts
        out[key] = timed(opt.policy_move, repeats)
    out["ratio"] = out["policy_step_s"] / out["chgnet_call_s"]
    out["ratio_cell"] = out["policy_step_cell_s"] / out["chgnet_call_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 and 64 atoms, one repeat")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for CHGNet and the policy alike (default 1)")
    ap.add_argument("--sizes", default="8,64,256,512", help="atom counts among 8, 64, 256, 512")
    ap.add_argument("--repeats", type=int, default=0, help="timed repeats per size (default 5 up to 64 atoms, else 2)")
    ap.add_argument("--config", default="configs/alfe.toml", help="the agent whose untrained policy steps")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where CHGNet and the policy run")
    ap.add_argument("--structure", default="si", choices=sorted(SUPERCELLS), help="diamond Si or bcc Fe supercells")
    args = ap.parse_args()
    if args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    sizes = [8, 64] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    cfg = load_config(args.config)
    cuda = torch.cuda.is_available()
    result = {"bench": "policy_step", "config": args.config, "head": cfg.network.actor_head, "structure": args.structure,
              "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "python": platform.python_version(),
              "torch": torch.__version__, "device": args.device, "cuda_available": cuda, "sizes": []}
    if args.device == "cuda" and not cuda:
        result["error"] = "--device cuda but no CUDA device is visible"
        print(json.dumps(result, indent=2))
        return
    torch.manual_seed(cfg.run.seed)
    policy = Policy(cfg, device=args.device)
    for n in sizes:
        repeats = args.repeats or (1 if args.quick else (5 if n <= 64 else 2))
        result["sizes"].append(measure(args.structure, n, policy, dict(cfg.env.calculator_kwargs), args.device, repeats))
    big = [s for s in result["sizes"] if s["n_atoms"] >= 64]
    result["target"] = {"policy_step_over_force_call_at_64_atoms_and_more": 0.10,
                        "met": bool(big) and all(max(s["ratio"], s["ratio_cell"]) <= 0.10 for s in big)}
    result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
