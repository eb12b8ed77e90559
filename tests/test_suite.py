"""The generalisation suite (actors/suite.py): fixed content, kinds, constraints."""
from __future__ import annotations

import numpy as np
import pytest
from ase.constraints import FixAtoms

from actors.suite import SUITE_KINDS, generalisation_suite


def test_suite_is_deterministic_and_named_by_kind():
    a, b = generalisation_suite(), generalisation_suite()
    assert [x.info["name"] for x in a] == [x.info["name"] for x in b]
    assert len({x.info["name"] for x in a}) == len(a) == 27
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.cell[:], y.cell[:])
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
    assert [k for k in SUITE_KINDS if any(x.info["kind"] == k for x in a)] == list(SUITE_KINDS)
    assert all(x.info["name"].startswith(x.info["kind"] + "-") for x in a)


def test_adsorbates_keep_their_fixed_bottom_layers():
    ads = generalisation_suite(kinds=["adsorbate"])
    assert len(ads) == 5
    for atoms in ads:
        fixed = [c for c in atoms.constraints if isinstance(c, FixAtoms)]
        assert len(fixed) == 1
        idx = fixed[0].get_indices()
        assert len(idx) == 8  # two bottom layers of a 2x2x4 slab
        assert set(atoms.get_tags()[idx]) == {3, 4}
        copy = atoms.copy()  # evaluate() relaxes copies: the constraint travels with them
        assert [list(c.get_indices()) for c in copy.constraints] == [list(idx)]


def test_every_suite_structure_passes_the_environment_checks():
    """No atoms overlap at the start (CO sat upside down, its C 0.6 Å above Pt, until the builder put C down)."""
    from actors.structure_check import check_structure

    for atoms in generalisation_suite():
        check_structure(atoms, atoms.info["name"], calculator="emt", min_distance_factor=0.6)
    co = next(a for a in generalisation_suite(kinds=["adsorbate"]) if "CO" in a.info["name"])
    c, o = (i for i, s in enumerate(co.get_chemical_symbols()) if s in "CO")
    assert co.positions[c, 2] < co.positions[o, 2]  # carbon binds to the metal


def test_a_relaxed_adsorbate_is_not_counted_as_a_fragment():
    """EMT relaxes H on Pd(111) 2.30 Å from the surface: bonded at 1.5 × ASE's natural cutoffs (2.55 Å),
    'fragmented' at 1.3 × (2.21 Å), which made every optimizer fail that structure."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    from relaxrl.evaluate import fragment_count

    hpd = next(a for a in generalisation_suite(kinds=["adsorbate"]) if "HPd" in a.info["name"])
    a = hpd.copy()
    a.calc = EMT()
    BFGS(a, logfile=None).run(fmax=0.05, steps=100)
    assert fragment_count(a) == fragment_count(hpd) == 1
    a.positions[-1, 2] += 2.0  # the H 2 Å further off: it has left the surface
    assert fragment_count(a) == 2


def test_the_validation_draw_has_the_suites_recipes_but_other_structures():
    """suite-val: the suite's kinds and sizes, different structures, and as fixed as the suite."""
    from actors.suite import VALIDATION_SEED

    suite, val = generalisation_suite(), generalisation_suite(seed=VALIDATION_SEED)
    again = generalisation_suite(seed=VALIDATION_SEED)
    assert [x.info["kind"] for x in val] == [x.info["kind"] for x in suite]
    assert [len(x) for x in val] == [len(x) for x in suite]
    for x, y, z in zip(suite, val, again):
        np.testing.assert_array_equal(y.positions, z.positions)
        assert not np.allclose(x.positions, y.positions)


def test_the_large_suite_is_fixed_large_and_runs_under_emt():
    """suite-large: at least 8 seeded structures of 100–500 atoms, EMT elements, slabs with fixed bottom layers,
    every start passing the environment's checks, and streams apart from the suite's."""
    from actors.calculators import calculator_elements
    from actors.structure_check import check_structure
    from actors.suite import LARGE_KINDS, large_sample, large_suite

    a, b = large_suite(), large_suite()
    assert len(a) >= 8 and len({x.info["name"] for x in a}) == len(a)
    assert [k for k in LARGE_KINDS if any(x.info["kind"] == k for x in a)] == list(LARGE_KINDS)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.get_chemical_symbols() == y.get_chemical_symbols()
        assert 100 <= len(x) <= 500, x.info["name"]
        assert set(x.get_chemical_symbols()) <= calculator_elements("emt")
        check_structure(x, x.info["name"], calculator="emt", min_distance_factor=0.6)
    names = [x.info["name"] for x in a]
    assert "bulk-defect-Cu255-0" in names  # issue 24's example: 4×4×4 Cu (a = 3.6 Å), one vacancy, rattled
    for x in a:
        if x.info["kind"] in ("slab-large", "adsorbate-layer"):
            fixed = [c for c in x.constraints if isinstance(c, FixAtoms)]
            assert len(fixed) == 1 and set(x.get_tags()[fixed[0].get_indices()]) == {3, 4}
    cu = next(x for x in a if x.info["name"] == "bulk-defect-Cu255-0")
    ideal = np.linalg.norm(cu.cell[0]) / 4
    assert ideal == pytest.approx(3.6)
    assert 0.1 < np.std(cu.positions - np.round(cu.positions / (ideal / 2)) * (ideal / 2)) < 0.2  # rattled ~0.15 Å
    assert [x.info["name"] for x in large_sample(3)] == [next(y.info["name"] for y in a if y.info["kind"] == k)
                                                         for k in ("bulk-defect", "alloy", "nanoparticle")]
