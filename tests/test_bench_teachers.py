"""The benches that run teachers alone (bench/relax_quality.py --teachers, bench/head_ceiling.py) and the fit
behind the model-Hessian teacher (bench/model_fit_loss.py): they run end to end on real EMT structures, and the
ceiling's truncated conjugate gradients solve what they should."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_relax_quality_runs_the_model_hessian_teacher_alone():
    out = _bench("relax_quality.py", "--quick", "--config", "configs/quality.toml", "--optimizers", "bfgs",
                 "--teachers", "model-hessian")
    teacher = out["teachers"]["model-hessian"]
    assert teacher["n_structures"] == 6 and teacher["converged"] >= 5
    assert 0 < teacher["force_calls_vs_bfgs"] < 1  # exact curvature: fewer steps than BFGS
    assert teacher["teacher_force_calls_not_counted"] > 0


def test_model_fit_loss_fits_periodic_images_together():
    out = _bench("model_fit_loss.py", "--quick")
    kinds = out["by_kind"]
    assert {"cluster", "bulk", "slab", "molecule"} <= set(kinds)
    assert kinds["cluster"]["joint"] == kinds["cluster"]["one_by_one"] < 0.1  # one image per pair: the same fit
    assert kinds["bulk"]["joint"] < 0.05 < 0.2 < kinds["bulk"]["one_by_one"]


def test_head_ceiling_variants_run_and_exact_curvature_beats_bfgs():
    names = {"model-fit", "exact", "graph-exact-tcg", "model-fit-energy"}
    out = _bench("head_ceiling.py", "--limit", "2", "--variants", ",".join(sorted(names)), "--memory", "2")
    assert set(out["variants"]) == names and out["memory"] == 2
    for v in out["variants"].values():
        assert v["n_structures"] == 2 and v["converged"] == 2
        assert 0 < v["force_calls_vs_bfgs"] < 1


def test_head_ceiling_rejects_an_unknown_variant():
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "head_ceiling.py"), "--variants", "newton"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and "unknown newton" in p.stderr and "model-fit" in p.stderr


def test_truncated_cg_solves_a_positive_system_and_stops_on_negative_curvature():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from head_ceiling import truncated_cg
    finally:
        sys.path.remove(str(ROOT / "bench"))
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    spd = a @ a.T + 6.0 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(6, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(spd, rhs)
    assert torch.allclose(truncated_cg(spd, rhs, radius=10.0 * float(exact.norm())), exact, atol=1e-8)
    # the same system with a radius inside the solution: the point on the radius
    assert float(truncated_cg(spd, rhs, radius=0.5 * float(exact.norm())).norm()) == pytest.approx(0.5 * float(exact.norm()))
    # an indefinite matrix whose first CG direction has negative curvature: steepest descent to the radius
    indefinite = -torch.eye(6, dtype=torch.float64)
    z = truncated_cg(indefinite, rhs, radius=0.3)
    assert float(z.norm()) == pytest.approx(0.3) and torch.allclose(z / z.norm(), rhs / rhs.norm())
