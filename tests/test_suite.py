"""The generalisation suite (actors/suite.py): fixed content, kinds, constraints."""
from __future__ import annotations

import numpy as np
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
