"""Small helpers shared by several test modules (imported as ``helpers``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from common.observation import Observation


def load_module(path: Path, name: str) -> Any:
    """Import a script that is not in a package (deploy/*.py) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def observe(atoms: Atoms, env_features: np.ndarray | None = None) -> Observation:
    """The observation of a copy of ``atoms`` under EMT."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    return Observation.from_atoms(atoms, env_features=env_features)


def cu_cluster(n: int, seed: int, with_ni: bool = False) -> Atoms:
    """The n fcc sites nearest a random point, rattled: a compact non-periodic Cu (optionally one Ni) cluster."""
    rng = np.random.default_rng(seed)
    block = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    centre = block.positions.mean(axis=0) + rng.normal(size=3)
    idx = np.argsort(np.linalg.norm(block.positions - centre, axis=1))[:n]
    atoms = Atoms(f"Cu{n}", positions=block.positions[idx])
    if with_ni:
        atoms.numbers[0] = 28
    atoms.rattle(0.1, seed=seed)
    return atoms


def lbfgs_reference(f: np.ndarray, history: np.ndarray, gamma0: float) -> np.ndarray:
    """Textbook L-BFGS two-loop (Nocedal & Wright alg. 7.4) with H0 = γ I, in numpy, on one structure."""
    g = -f.ravel()
    pairs = [(history[:, 6 * k:6 * k + 3].ravel(), -history[:, 6 * k + 3:6 * k + 6].ravel())
             for k in range(history.shape[1] // 6)]
    pairs = [(s, y) for s, y in pairs if s @ y > 1e-8 * np.linalg.norm(s) * np.linalg.norm(y) and s @ s > 0]
    gamma = next((s @ y / (y @ y) for s, y in pairs), gamma0)  # newest valid pair
    q, alphas = g.copy(), []
    for s, y in pairs:
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    r = gamma * q
    for (s, y), a in reversed(list(zip(pairs, alphas))):
        r += s * (a - (y @ r) / (s @ y))
    return -r.reshape(-1, 3)


def actor_loop_on_redis(redis_url: str, kind: str, preset: Path, overrides: list[str]) -> tuple[Any, Any, Any]:
    """(ActorLoop of ``kind``, its in-process Coordinator, the ReplayClient) for ``preset`` with ``overrides``, on
    fresh tables of a real Redis (a namespace of its own) and the demo structures of the preset's curriculum."""
    import dataclasses
    import uuid

    from actors.coordinator import Coordinator
    from actors.curriculum import Curriculum, load_structures
    from actors.loop import ActorLoop
    from common.config import load_config
    from replay_service.client import ReplayClient

    cfg = load_config(preset, overrides)
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, url=redis_url,
                                                              namespace=f"t{uuid.uuid4().hex[:8]}"))
    replay = ReplayClient(cfg.replay.url, cfg.replay)
    replay.create_tables()
    train, _ = load_structures("demo", cfg.curriculum, 0)
    hub = Coordinator(Curriculum(train, cfg.curriculum))
    return ActorLoop(kind, cfg, replay, hub), hub, replay


def preconditioned_lbfgs_reference(f: np.ndarray, history: np.ndarray, p_inv: np.ndarray) -> np.ndarray:
    """Textbook L-BFGS two-loop with H0 = γ·P⁻¹ (``p_inv`` [3n, 3n]): γ = 1 without a valid pair, else
    s·y / y·P⁻¹y of the newest valid pair (Nocedal's scaling in P's metric), in numpy, on one structure."""
    g = -f.ravel()
    pairs = [(history[:, 6 * k:6 * k + 3].ravel(), -history[:, 6 * k + 3:6 * k + 6].ravel())
             for k in range(history.shape[1] // 6)]
    pairs = [(s, y) for s, y in pairs if s @ y > 1e-8 * np.linalg.norm(s) * np.linalg.norm(y) and s @ s > 0]
    gamma = next((s @ y / (y @ p_inv @ y) for s, y in pairs), 1.0)
    q, alphas = g.copy(), []
    for s, y in pairs:
        a = (s @ q) / (s @ y)
        alphas.append(a)
        q -= a * y
    r = gamma * (p_inv @ q)
    for (s, y), a in reversed(list(zip(pairs, alphas))):
        r += s * (a - (y @ r) / (s @ y))
    return -r.reshape(-1, 3)
