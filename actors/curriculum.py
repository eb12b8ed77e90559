"""The training structures and their curriculum.

:func:`load_structures` gives (train, held-out) from ``curriculum.source``: ``'demo'``
(generated, actors/generate.py), ``'alfe'`` (actors/alfe.py), a directory of structure files
or one file (actors/structure_files.py). :class:`Curriculum` serves the training structures
by stages of atom count (actors/coordinator.py asks it for each episode's structure).
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from actors.alfe import alfe_structures
from actors.env import REFERENCE_ENERGY
from actors.generate import demo_structures, split_structures
from actors.geometry import perturb, random_strain
from actors.structure_check import StructureError
from actors.structure_files import read_structure_source
from common.config import CurriculumConfig

__all__ = ["Curriculum", "load_structures"]


def load_structures(source: str | Path, cfg: CurriculumConfig, seed: int, *, calculator: str = "emt",
                    min_distance_factor: float = 0.6, calculator_kwargs: dict | None = None,
                    relax_cell: bool = False) -> tuple[list[Atoms], list[Atoms]]:
    """(train, held-out) from ``'demo'``, ``'alfe'`` (actors/alfe.py), a directory of structure files, or one file.

    ``relax_cell`` (``env.relax_cell``): every structure must be periodic in all three directions, or this
    refuses the source naming the first that is not."""
    if str(source) == "demo":
        train, held = demo_structures(cfg, seed)
    elif str(source) == "alfe":  # Al–Fe minima relaxed under the configured calculator (cached on disk)
        train, held = alfe_structures(cfg, seed, calculator, calculator_kwargs, min_distance_factor)
    elif not Path(source).exists():
        raise StructureError(f"structure source {str(source)!r} is neither 'demo', 'alfe' nor an existing directory or file")
    else:
        structures = read_structure_source(source, calculator=calculator, min_distance_factor=min_distance_factor)
        train, held = split_structures(structures, cfg.heldout_fraction, seed)
    if relax_cell:
        flat = [a for a in list(train) + list(held) if not a.pbc.all()]
        if flat:
            raise StructureError(
                f"env.relax_cell relaxes cells, but {len(flat)} structure(s) of curriculum.source {str(source)!r} are not "
                f"periodic in all three directions (e.g. {flat[0].info.get('name', flat[0].get_chemical_formula())!r}, "
                f"pbc {flat[0].pbc.tolist()}); use crystals only ('alfe' or your files) or set env.relax_cell = false")
    return train, held


class Curriculum:
    """Stages by atom count, unlocked by t_total or by the recent success rate.

    Stage ``k`` samples uniformly from every training structure with at most
    ``stages[k]`` atoms (so small structures keep coming). The next stage unlocks when
    ``unlock_t_total`` environment steps have passed since the current stage began
    (``unlock_t_total = 0`` disables this) or when the success rate over the last
    ``success_window`` episodes of the current stage reaches ``unlock_success``.
    Structures larger than the last stage are never sampled (see ``excluded``).

    It also keeps each structure's *reference minimum*: the lowest energy per atom any actor's converged episode
    reached on it (:meth:`report_minimum`), handed out with every sample in ``atoms.info["reference_energy_per_atom"]``
    for ``env.reference_tolerance``, and in :meth:`state_dict` with the stage (a resumed run, which starts the curriculum
    anew, finds them anew). Only structures of a unique name have one, and none under ``curriculum.strain`` (a strained
    cell has other minima).
    """

    def __init__(self, structures: Sequence[Atoms], cfg: CurriculumConfig, t_total: int = 0,
                 min_distance_factor: float = 0.6):
        if not structures:
            raise StructureError("the curriculum got no training structures; check curriculum.source")
        stages = tuple(int(s) for s in cfg.stages)  # non-empty and increasing: CurriculumConfig checks it
        self.cfg = cfg
        self.min_distance_factor = float(min_distance_factor)
        """The environment's overlap limit (env.min_distance_factor): no displaced or strained sample is closer."""
        self.stages = stages
        self._pools = [[a for a in structures if len(a) <= m] for m in stages]
        if not self._pools[0]:
            smallest = min(len(a) for a in structures)
            raise StructureError(
                f"no training structure has at most {stages[0]} atoms (the smallest has {smallest}); lower "
                "the first entry of curriculum.stages or add smaller structures"
            )
        self.excluded = [str(a.info.get("name", "")) for a in structures if len(a) > stages[-1]]
        self.stage = 0
        self._stage_start = int(t_total)
        self._window: deque[bool] = deque(maxlen=max(1, cfg.success_window))
        counts = Counter(str(a.info.get("name", "")) for a in structures)
        self._referenced = set() if cfg.strain > 0 else {n for n, c in counts.items() if n and c == 1}
        self.minima: dict[str, float] = {}
        """Lowest converged energy per atom reached on each structure so far (eV/atom), by name."""

    @property
    def max_atoms(self) -> int:
        """Largest atom count of the active stage."""
        return self.stages[self.stage]

    @property
    def pool(self) -> list[Atoms]:
        """Structures the active stage samples from (do not modify them)."""
        return self._pools[self.stage]

    @property
    def success_rate(self) -> float:
        """Success rate over the current stage's recent episodes (0 when none)."""
        return sum(self._window) / len(self._window) if self._window else 0.0

    def sample(self, rng: np.random.Generator) -> Atoms:
        """A copy of a random structure of the active stage; with ``curriculum.strain`` its cell (periodic ones)
        strained anew. Displacement and strain never bring a pair closer than the environment's check allows
        (``min_distance_factor``), so no sample is one the environment refuses."""
        atoms = self.pool[int(rng.integers(len(self.pool)))]
        if atoms.info.get("perturb"):  # a minimum (source 'alfe'): displaced anew for every episode
            atoms = perturb(atoms, float(atoms.info["perturb"]), rng, self.min_distance_factor)
        if self.cfg.strain > 0:
            return random_strain(atoms, self.cfg.strain, rng, self.min_distance_factor)
        out = atoms.copy()
        ref = self.minima.get(str(atoms.info.get("name", "")))
        if ref is not None:
            out.info[REFERENCE_ENERGY] = ref
        return out

    def report_minimum(self, name: str, energy_per_atom: float) -> None:
        """A converged episode on structure ``name`` ended at ``energy_per_atom`` (eV/atom): the reference minimum
        becomes it when lower (names without a reference, and non-finite energies, are ignored)."""
        e = float(energy_per_atom)
        if name in self._referenced and np.isfinite(e) and e < self.minima.get(name, np.inf):
            self.minima[name] = e

    def report(self, t_total: int, success: bool | None) -> bool:
        """Record one finished episode at ``t_total``; returns True when a new stage unlocked.

        ``success=None`` (e.g. an expert episode) only advances the t_total clock and does
        not enter the success window.
        """
        if success is not None:
            self._window.append(bool(success))
        if self.stage + 1 >= len(self.stages):
            return False
        by_steps = self.cfg.unlock_t_total > 0 and t_total - self._stage_start >= self.cfg.unlock_t_total
        by_success = (len(self._window) == self._window.maxlen and self.success_rate >= self.cfg.unlock_success)
        if by_steps or by_success:
            self.stage += 1
            self._stage_start = int(t_total)
            self._window.clear()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Progress to store in a checkpoint."""
        return {"stage": self.stage, "stage_start": self._stage_start, "window": list(self._window),
                "minima": dict(self.minima)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`."""
        self.stage = min(int(state["stage"]), len(self.stages) - 1)
        self._stage_start = int(state["stage_start"])
        self._window.clear()
        self._window.extend(bool(x) for x in state["window"])
        self.minima = {str(k): float(v) for k, v in state.get("minima", {}).items() if k in self._referenced}
