"""Structure sources (generated, files), the train/held-out split, the curriculum, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.constraints import FixAtoms, FixScaled
from ase.io import write

from actors.curriculum import Curriculum, load_structures
from actors.env import REFERENCE_ENERGY, EnvConfig, RelaxEnv
from actors.generate import demo_structures, generate_demo, large_clusters, split_structures
from actors.structure_check import StructureError, check_structure
from actors.structure_files import read_structure, read_structure_file
from actors.suite import generalisation_suite
from common.config import CurriculumConfig

CFG = CurriculumConfig()


@pytest.fixture(scope="module")
def demo():
    return generate_demo(CFG, seed=0)


# ----------------------------------------------------------------------------- generated


def test_demo_is_deterministic_and_depends_on_the_seed(demo):
    again = generate_demo(CFG, seed=0)
    other = generate_demo(CFG, seed=1)
    assert [a.info["name"] for a in demo] == [a.info["name"] for a in again]
    for a, b in zip(demo, again):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert any(not np.allclose(a.positions, b.positions) for a, b in zip(demo, other) if len(a) == len(b))


def test_demo_spans_the_curriculum_stages(demo):
    sizes = np.array([len(a) for a in demo])
    assert len(demo) == CFG.n_structures
    assert ((sizes >= 3) & (sizes <= 8)).mean() >= 0.5  # mostly small clusters
    assert ((sizes > 8) & (sizes <= 16)).sum() >= 5
    assert (sizes > 16).sum() >= 3 and sizes.max() <= 64
    kinds = {a.info["kind"] for a in demo}
    assert kinds == {"cluster", "bulk", "slab"}


def test_demo_structures_are_valid_and_named(demo):
    names = [a.info["name"] for a in demo]
    assert len(set(names)) == len(names)
    assert names[0].startswith("cluster-") and "-s0-" in names[0]
    for atoms in demo:
        check_structure(atoms)  # EMT elements, no overlaps
        assert atoms.calc is None
        assert set(atoms.get_chemical_symbols()) <= set(CFG.elements)
        if atoms.info["kind"] == "cluster":
            d = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
            assert d.min() >= CFG.min_distance - 1e-9
            # compact: every atom has a neighbour within 1.3 × the largest fcc bond (Ag/Au/Al ≈ 2.9 Å)
            nearest = np.sort(atoms.get_all_distances(), axis=1)[:, 1]
            assert nearest.max() < 1.3 * 2.9
        else:
            assert atoms.pbc.any()


def test_split_is_deterministic_disjoint_and_spans_sizes(demo):
    train, held = split_structures(demo, 0.25, seed=0)
    train2, held2 = demo_structures(CFG, seed=0)
    assert [a.info["name"] for a in held] == [a.info["name"] for a in held2]
    assert [a.info["name"] for a in train] == [a.info["name"] for a in train2]
    names_t = {a.info["name"] for a in train}
    names_h = {a.info["name"] for a in held}
    assert not names_t & names_h and len(names_t | names_h) == len(demo)
    assert 0.15 <= len(held) / len(demo) <= 0.35
    assert min(len(a) for a in held) <= 8 and max(len(a) for a in held) > 16
    _, held_other = split_structures(demo, 0.25, seed=5)
    assert {a.info["name"] for a in held_other} != names_h


def test_large_cells_join_the_training_set_without_moving_the_split_of_the_others():
    cfg = CurriculumConfig(n_large=8)
    train0, held0 = demo_structures(CFG, seed=0)
    train, held = demo_structures(cfg, seed=0)
    names = lambda structures: [a.info["name"] for a in structures]  # noqa: E731
    assert names(train0) == names([a for a in train if len(a) <= 64])
    assert names(held0) == names([a for a in held if len(a) <= 64])
    large = [a for a in train + held if len(a) > 64]
    assert len(large) == 8 and len([a for a in held if len(a) > 64]) == 2
    assert {len(a) for a in large} == {96, 108, 125, 128}
    for atoms in large:
        check_structure(atoms)
        assert atoms.pbc.any() and atoms.info["kind"] in {"bulk", "slab"} and "-large" in atoms.info["name"]
    # a stage of 128 atoms reaches them; the default stages (at most 64) leave them out, named
    assert max(len(a) for a in Curriculum(train, CurriculumConfig(stages=(128,))).pool) > 64
    assert len(Curriculum(train, cfg).excluded) == 6
    with pytest.raises(ValueError, match="n_large"):
        CurriculumConfig(n_large=-1)


def test_large_clusters_join_the_training_set_without_moving_the_split_of_the_others():
    cfg = CurriculumConfig(n_large_clusters=8)
    train0, held0 = demo_structures(CFG, seed=0)
    train, held = demo_structures(cfg, seed=0)
    names = lambda structures: [a.info["name"] for a in structures]  # noqa: E731
    new = [a for a in train + held if "-lc" in a.info["name"]]
    assert names(train0) == names([a for a in train if "-lc" not in a.info["name"]])
    assert names(held0) == names([a for a in held if "-lc" not in a.info["name"]])
    assert len(new) == 8 and len([a for a in held if "-lc" in a.info["name"]]) == 2
    assert sorted(len(a) for a in new) == [20, 26, 32, 38, 44, 50, 56, 64]
    suite_positions = [a.positions for a in generalisation_suite() if a.info["kind"] == "cluster-large"]
    for atoms in new:
        check_structure(atoms)
        assert not atoms.pbc.any() and atoms.info["kind"] == "cluster"
        assert all(len(atoms) != len(p) or not np.allclose(atoms.positions, p) for p in suite_positions)
    assert not np.allclose(large_clusters(cfg, seed=1)[0].positions, large_clusters(cfg, seed=0)[0].positions)
    with pytest.raises(ValueError, match="n_large_clusters"):
        CurriculumConfig(n_large_clusters=-1)


# ----------------------------------------------------------------------------- files


def _fixtures(tmp_path: Path) -> dict[str, Atoms]:
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=5.0)
    slab.info.clear()
    cluster = Atoms("Au3", positions=[[0, 0, 0], [2.8, 0, 0], [1.4, 2.4, 0]])
    write(tmp_path / "cu.cif", cu)
    write(tmp_path / "POSCAR_Pt", slab, format="vasp")
    write(tmp_path / "frames.extxyz", [cluster, slab], format="extxyz")
    (tmp_path / "notes.txt").write_text("ignored: not a structure file")
    slab_3d = slab.copy()
    slab_3d.pbc = True  # a POSCAR is periodic in all three directions
    return {"cu.cif": cu, "POSCAR_Pt": slab_3d, "frames.extxyz#0": cluster, "frames.extxyz#1": slab}


def test_load_cif_poscar_extxyz_written_by_ase(tmp_path):
    expected = _fixtures(tmp_path)
    train, held = load_structures(tmp_path, CurriculumConfig(heldout_fraction=0.0), seed=0)
    assert not held
    got = {a.info["name"]: a for a in train}
    assert set(got) == set(expected)
    for name, ref in expected.items():
        atoms = got[name]
        assert atoms.get_chemical_formula() == ref.get_chemical_formula()
        np.testing.assert_allclose(atoms.cell[:], ref.cell[:], atol=1e-6)
        np.testing.assert_array_equal(atoms.pbc, ref.pbc)
        # same sites up to wrapping into the cell (pymatgen keeps order for P1 files)
        if ref.pbc.all():
            frac_a, frac_r = atoms.get_scaled_positions(), ref.get_scaled_positions()
            diff = (frac_a - frac_r + 0.5) % 1.0 - 0.5
            np.testing.assert_allclose(diff, 0.0, atol=1e-6)
        else:
            np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-6)
    # loaded structures run in the environment
    RelaxEnv(EnvConfig()).reset(got["cu.cif"])


@pytest.mark.parametrize("name", ["cu.cif", "POSCAR_Pt", "frames.extxyz"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.93])
def test_truncated_file_is_a_clear_error(tmp_path, name, keep):
    _fixtures(tmp_path)
    path = tmp_path / name
    text = path.read_text()
    path.write_text(text[: int(len(text) * keep)])
    with pytest.raises(StructureError, match=name) as err:
        read_structure_file(path)
    assert "truncated" in str(err.value)


@pytest.mark.parametrize("name, text", [
    ("garbage.cif", "this is not a CIF file\n{}{}\n"),
    ("POSCAR", "Cu\n1.0\n3 0 0\n0 3 0\n0 0 three\nCu\n1\nDirect\n0 0 0\n"),
    ("bad.extxyz", "2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu zero 0 0\n"),
])
def test_malformed_file_is_a_clear_error(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(StructureError, match=name):
        read_structure_file(tmp_path / name)


@pytest.mark.parametrize("element", ["U", "Fe"])
def test_unsupported_element_names_file_and_element(tmp_path, element):
    atoms = Atoms(f"Cu{element}", positions=[[0, 0, 0], [2.6, 0, 0]], cell=[8, 8, 8], pbc=True)
    write(tmp_path / "alloy.cif", atoms)
    with pytest.raises(StructureError, match=rf"alloy\.cif.*{element}.*'emt'"):
        load_structures(tmp_path, CFG, seed=0)
    # another calculator that handles any element accepts it
    read_structure_file(tmp_path / "alloy.cif", calculator="ase.calculators.lj:LennardJones")


def test_overlapping_atoms_are_rejected(tmp_path):
    atoms = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [2.9, 0.3, 0]])
    write(tmp_path / "squashed.extxyz", atoms)
    with pytest.raises(StructureError, match=r"squashed\.extxyz.*atoms 1 \(Cu\) and 2 \(Cu\) overlap"):
        read_structure_file(tmp_path / "squashed.extxyz")
    # a periodic image counts too: atom 0 and the image of atom 1 are 0.5 Å apart
    periodic = Atoms("Cu2", positions=[[0.2, 0, 0], [7.7, 0, 0]], cell=[8, 8, 8], pbc=True)
    with pytest.raises(StructureError, match="overlap"):
        check_structure(periodic, "periodic-pair")


def test_bad_sources(tmp_path):
    with pytest.raises(StructureError, match="neither 'demo'"):
        load_structures(tmp_path / "missing", CFG, seed=0)
    with pytest.raises(StructureError, match="has no .cif"):
        load_structures(tmp_path, CFG, seed=0)
    # a name that does not tell the format goes to ASE's guess, then pymatgen; both fail here
    (tmp_path / "cu.pdb").write_text("ATOM")
    with pytest.raises(StructureError, match=r"cu\.pdb cannot be read \(ase: .*pymatgen: .*format ASE or pymatgen reads"):
        read_structure_file(tmp_path / "cu.pdb")
    with pytest.raises(StructureError, match="is a directory"):
        read_structure_file(tmp_path)


def _cif(sites: list[tuple[str, str, tuple[float, float, float], float]], formula: str) -> str:
    """A P1 CIF (a = 3.8 Å cubic) with an occupancy column."""
    rows = "".join(f"{label} {el} {x} {y} {z} {occ}\n" for label, el, (x, y, z), occ in sites)
    return ("data_test\n_cell_length_a 3.8\n_cell_length_b 3.8\n_cell_length_c 3.8\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\n"
            f"_chemical_formula_sum '{formula}'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
            "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n" + rows)


FCC = [(0.0, 0.0, 0.0), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)]


def _fixed_slab() -> Atoms:
    """A rattled Cu(111) slab: bottom layer FixAtoms, one atom FixScaled along a and c."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.info.clear()
    slab.rattle(0.05, seed=3)
    slab.set_constraint([FixAtoms(indices=[0, 1, 2, 3]), FixScaled(4, [True, False, True])])
    return slab


def test_constraints_are_kept_from_extxyz_traj_and_poscar(tmp_path):
    slab = _fixed_slab()
    only_fixatoms = slab.copy()
    only_fixatoms.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    write(tmp_path / "slab.extxyz", only_fixatoms)
    write(tmp_path / "slab.traj", only_fixatoms)
    write(tmp_path / "POSCAR", slab, format="vasp")  # selective dynamics: F F F rows and one T F T row
    assert "Selective dynamics" in (tmp_path / "POSCAR").read_text()
    for name in ("slab.extxyz", "slab.traj"):
        (atoms,) = read_structure_file(tmp_path / name)
        assert [type(c).__name__ for c in atoms.constraints] == ["FixAtoms"]
        assert list(atoms.constraints[0].index) == [0, 1, 2, 3]
    atoms = read_structure(tmp_path / "POSCAR")
    by_type = {type(c).__name__: c for c in atoms.constraints}
    assert set(by_type) == {"FixAtoms", "FixScaled"}
    assert list(by_type["FixAtoms"].index) == [0, 1, 2, 3]
    assert list(by_type["FixScaled"].index) == [4] and list(by_type["FixScaled"].mask) == [True, False, True]
    # the same reader serves training: the directory loads with the constraints, the env ignores them
    train, _ = load_structures(tmp_path, CurriculumConfig(heldout_fraction=0.0), seed=0)
    assert sorted(a.info["name"] for a in train) == ["POSCAR", "slab.extxyz", "slab.traj"]
    assert all(a.constraints for a in train)
    RelaxEnv(EnvConfig()).reset(train[0])


@pytest.mark.parametrize("sites, formula, message", [
    ([(f"Cu{k}", "Cu", p, 0.5) for k, p in enumerate(FCC)] + [(f"Au{k}", "Au", p, 0.5) for k, p in enumerate(FCC)],
     "Cu2 Au2", r"partial occupancies \(site Cu0 \(Cu, occupancy 0.5\) \+ Au0 \(Au, occupancy 0.5\) and 3 more"),
    ([(f"Cu{k}", "Cu", p, 1.0 if k else 0.75) for k, p in enumerate(FCC)],
     "Cu3.75", r"partial occupancies \(site Cu0 \(Cu, occupancy 0.75\)\)"),
])
def test_partial_occupancies_are_refused(tmp_path, sites, formula, message):
    (tmp_path / "disordered.cif").write_text(_cif(sites, formula))
    with pytest.raises(StructureError, match=r"disordered\.cif has " + message + ".*order it first") as err:
        read_structure_file(tmp_path / "disordered.cif")
    assert "truncated" not in str(err.value)


@pytest.mark.parametrize("extra, formula, pair", [
    (("Au0", "Au", FCC[0], 1.0), "Cu4 Au", r"Cu0 \(Cu, occupancy 1\) \+ Au0 \(Au, occupancy 1\)"),
    (("Cu9", "Cu", (1.0, 0.0, 0.0), 1.0), "Cu5", r"Cu0 \(Cu, occupancy 1\) \+ Cu9 \(Cu, occupancy 1\)"),
])
def test_two_atoms_on_one_cif_site_are_reported_as_such(tmp_path, extra, formula, pair):
    sites = [(f"Cu{k}", "Cu", p, 1.0) for k, p in enumerate(FCC)] + [extra]
    (tmp_path / "dup.cif").write_text(_cif(sites, formula))
    with pytest.raises(StructureError, match=r"dup\.cif has two atoms on one site: " + pair) as err:
        read_structure_file(tmp_path / "dup.cif")
    assert "truncated" not in str(err.value)


def test_two_atoms_on_one_poscar_site_are_reported_as_such(tmp_path):
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    doubled = cu + cu[1:2]  # atom 4 repeats atom 1
    write(tmp_path / "POSCAR", doubled, format="vasp")
    with pytest.raises(StructureError, match=r"POSCAR.*two atoms on one site: atoms 1 \(Cu\) and 4 \(Cu\) are 0\.0000 Å"):
        read_structure_file(tmp_path / "POSCAR")


def test_multi_frame_files_every_frame_or_one_chosen_frame(tmp_path):
    expected = _fixtures(tmp_path)  # frames.extxyz: Au3 cluster, then the Pt slab
    path = tmp_path / "frames.extxyz"
    assert [a.info["name"] for a in read_structure_file(path)] == ["frames.extxyz#0", "frames.extxyz#1"]
    with pytest.raises(StructureError, match=r"frames\.extxyz holds 2 frames.*--index N \(0 … 1, or -1 for the last\)"):
        read_structure(path)
    for index, name in ((0, "frames.extxyz#0"), (1, "frames.extxyz#1"), (-1, "frames.extxyz#1"), (-2, "frames.extxyz#0")):
        atoms = read_structure(path, index=index)
        assert atoms.info["name"] == name
        np.testing.assert_allclose(atoms.positions, expected[name].positions, atol=1e-8)
    with pytest.raises(StructureError, match=r"holds 2 frame\(s\); index 2 is out of range"):
        read_structure(path, index=2)
    with pytest.raises(StructureError, match="index -3 is out of range"):
        read_structure_file(path, index=-3)
    # a one-frame file needs no index
    assert read_structure(tmp_path / "cu.cif").info["name"] == "cu.cif"


# ----------------------------------------------------------------------------- curriculum


def _sized(n: int) -> Atoms:
    atoms = Atoms(f"Cu{n}", positions=np.arange(n)[:, None] * np.array([2.6, 0, 0]))
    atoms.info["name"] = f"chain-{n}"
    return atoms


POOL = [_sized(n) for n in (3, 5, 8, 12, 16, 30, 64, 80)]


def test_curriculum_order_and_pools():
    cur = Curriculum(POOL, CurriculumConfig(stages=(8, 16, 32, 64), unlock_t_total=100, unlock_success=2.0))
    rng = np.random.default_rng(0)
    seen = []
    for t_total in range(0, 401, 10):
        assert max(len(cur.sample(rng)) for _ in range(10)) <= cur.max_atoms
        seen.append((cur.stage, cur.max_atoms))
        cur.report(t_total, success=False)
    stages = [s for s, _ in seen]
    assert stages == sorted(stages) and stages[0] == 0 and stages[-1] == 3
    assert [m for _, m in dict(seen).items()] == [8, 16, 32, 64]
    assert {len(a) for a in cur.pool} == {3, 5, 8, 12, 16, 30, 64}  # small ones keep coming
    assert cur.excluded == ["chain-80"]


def test_curriculum_unlocks_by_t_total_since_the_stage_began():
    cur = Curriculum(POOL, CurriculumConfig(unlock_t_total=1000, unlock_success=2.0, success_window=5))
    assert not cur.report(999, True)
    assert cur.report(1000, True) and cur.stage == 1
    assert not cur.report(1999, False)
    assert cur.report(2000, False) and cur.stage == 2


def test_curriculum_unlocks_by_success_over_the_window():
    cur = Curriculum(POOL, CurriculumConfig(unlock_t_total=0, unlock_success=0.6, success_window=5))
    for ok in (True, False, True, False):
        assert not cur.report(10**9, ok)  # window not full yet; t_total never unlocks (0)
    assert not cur.report(10**9, False)  # 2/5 = 0.4
    assert not cur.report(10**9, True)  # 2/5
    assert cur.report(10**9, True) and cur.stage == 1  # 3/5 = 0.6
    assert cur.success_rate == 0.0  # the window restarts with the stage
    for _ in range(20):
        cur.report(10**9, None)  # expert episodes do not count as successes
    assert cur.stage == 1


def test_curriculum_sample_is_a_copy_and_state_round_trips():
    cur = Curriculum(POOL, CurriculumConfig(unlock_t_total=10))
    atoms = cur.sample(np.random.default_rng(0))
    atoms.positions += 1.0
    assert all(not np.allclose(a.positions, atoms.positions) for a in cur.pool if len(a) == len(atoms))
    cur.report(10, True)
    restored = Curriculum(POOL, CurriculumConfig(unlock_t_total=10))
    restored.load_state_dict(cur.state_dict())
    assert restored.stage == cur.stage == 1 and restored.max_atoms == 16


def test_curriculum_keeps_the_lowest_minimum_per_structure_and_hands_it_out():
    """report_minimum keeps the lowest converged energy per atom by name; every later sample of that structure
    carries it in atoms.info (env.reference_tolerance), other structures none; it survives the checkpoint's
    state round trip. A name two structures share, an unknown name and a non-finite energy set nothing, and
    under curriculum.strain (other cells, other minima) nothing is kept."""
    dup = [_sized(3), _sized(5)]
    dup[1].info["name"] = "chain-3"  # two structures, one name: no reference for either
    cur = Curriculum(POOL + [_sized(4)] + dup, CurriculumConfig(stages=(5,)))
    cur.report_minimum("chain-5", -0.20)
    cur.report_minimum("chain-5", -0.10)  # higher: the reference stays
    cur.report_minimum("chain-4", -0.30)
    cur.report_minimum("chain-4", -0.35)  # lower: it moves
    for name, e in (("chain-3", -9.0), ("nowhere", -9.0), ("chain-5", float("nan")), ("chain-5", float("-inf"))):
        cur.report_minimum(name, e)
    assert cur.minima == {"chain-5": -0.20, "chain-4": -0.35}
    rng = np.random.default_rng(0)
    got = {}
    for _ in range(60):
        a = cur.sample(rng)
        got.setdefault(a.info["name"], a.info.get(REFERENCE_ENERGY))
    assert got == {"chain-5": -0.20, "chain-4": -0.35, "chain-3": None}
    assert all(REFERENCE_ENERGY not in a.info for a in cur.pool)  # the pool's structures are never written to
    restored = Curriculum(POOL + [_sized(4)] + dup, CurriculumConfig(stages=(5,)))
    restored.load_state_dict(cur.state_dict())
    assert restored.minima == cur.minima
    strained = Curriculum(POOL, CurriculumConfig(stages=(5,), strain=0.02))
    strained.report_minimum("chain-5", -0.20)
    assert strained.minima == {}


def test_curriculum_without_small_structures_is_an_error():
    with pytest.raises(StructureError, match="at most 8 atoms"):
        Curriculum([_sized(12)], CurriculumConfig())


@pytest.mark.parametrize("option", ["env.calculator", "--calculator"])
def test_unsupported_element_advice_names_the_option_the_user_sets(tmp_path, option):
    """`relaxrl train` reads the config key, `relax`/`eval` their flag: the advice names the one in use."""
    write(tmp_path / "si.extxyz", Atoms("Si2", positions=[[0, 0, 0], [2.35, 0, 0]]))
    kwargs = {} if option == "env.calculator" else {"calculator_option": option}
    with pytest.raises(StructureError, match=rf"contains Si, .* choose another calculator with {option}$"):
        read_structure(tmp_path / "si.extxyz", **kwargs)


# ----------------------------------------------------------------------------- issue 27: bounded work, no nonsense


def _cu_with_cell(kind: str) -> Atoms:
    """Rattled cubic Cu4 with a cell of the given kind (what the issue's probes sent)."""
    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=1)
    a, b, c = np.array(cu.cell)
    cells = {"flat": ([a, b, a + b], False), "nearly flat": ([a, b, a + b + [0, 0, 1e-6]], False),
             "scaled by 0.01": (cu.cell * 0.01, True), "pm read as Å": (cu.cell * 100, True),
             "skewed beyond a bounded search": ([a, b, c + 400 * a], False),
             "skewed but searchable": ([a, b, c + 40 * a], False)}
    cell, scale = cells[kind]
    out = cu.copy()
    out.set_cell(cell, scale_atoms=scale)
    return out


@pytest.mark.parametrize("kind, message", [
    ("flat", "its cell is singular"),
    ("nearly flat", "its cell is nearly singular"),
    ("scaled by 0.01", "its volume per atom is 1.18e-05 Å³"),
    ("pm read as Å", "its volume per atom is 1.18e+07 Å³"),
    ("skewed beyond a bounded search", "so thin or skewed that a 10 Å neighbour search would scan"),
    ("isolated atoms", "no atom has another within 8 Å (the nearest pair is 255.3 Å apart)"),
])
def test_cells_and_coordinates_no_bounded_search_or_real_structure_has_are_refused_at_once(kind, message):
    """A flat cell drove `relax` to 4 GB in 30 s, a cell ×0.01 to MemoryError, a flat one to LinAlgError; pm read
    as Å 'converged in 0 steps'. Each is one StructureError now, before any neighbour search."""
    import time

    if kind == "isolated atoms":
        atoms = Atoms("Cu4", positions=bulk("Cu", cubic=True).positions * 100)
    else:
        atoms = _cu_with_cell(kind)
    t0 = time.perf_counter()
    with pytest.raises(StructureError, match="structure 'probe': ") as e:
        check_structure(atoms, "probe")
    assert message in str(e.value) and "\n" not in str(e.value) and time.perf_counter() - t0 < 5


def test_structures_of_every_real_kind_pass_the_bounds(demo):
    """The bounds refuse nothing real: the demo set, a valid but skewed basis, a slab, a molecule in no cell, one
    atom in a box, a dimer."""
    from ase.build import molecule

    one = Atoms("Cu", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=True)
    for atoms in [*demo, _cu_with_cell("skewed but searchable"), fcc111("Cu", (2, 2, 3), vacuum=8.0),
                  molecule("CH4"), one, Atoms("Cu2", positions=[[0, 0, 0], [2.3, 0, 0]])]:
        check_structure(atoms)


def test_displaced_and_strained_samples_never_overlap():
    """The Al–Fe run that stopped on 'atoms 2 (Fe) and 6 (Fe) overlap at 1.566 Å': each displacement passed the
    overlap check, then the strain squeezed the pair. Sampled displacement and strain together stay clear of the
    environment's limit, for any min_distance_factor the environment uses, and every sample is accepted by it."""
    from actors.geometry import find_overlaps, random_strain

    pair = Atoms("Fe2", positions=[(0, 0, 0), (1.61, 0, 0)], cell=[4.0, 4.0, 4.0], pbc=True)  # limit 0.6 × 2.64 = 1.584 Å
    pair.info.update(name="Fe2-close", perturb=0.05)
    rng = np.random.default_rng(1)
    blind = [pair.copy() for _ in range(60)]
    for a in blind:  # the bare strain of a ±5 % cell, as before: it overlaps often
        eps = rng.uniform(-0.05, 0.05, (3, 3))
        a.set_cell(pair.cell @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
    assert sum(bool(find_overlaps(a, 0.6)) for a in blind) >= 10

    for factor in (0.6, 0.61):
        cur = Curriculum([pair], CurriculumConfig(stages=(8,), strain=0.05), min_distance_factor=factor)
        samples = [cur.sample(rng) for _ in range(200)]
        assert not any(find_overlaps(a, factor) for a in samples)
        assert sum(not np.allclose(a.cell, pair.cell) for a in samples) >= 100  # strained, not just copied
        for a in samples[:5]:
            check_structure(a, a.info["name"], calculator=None, min_distance_factor=factor)  # what RelaxEnv.reset asks
    # a cell no strain of which fits is returned unstrained rather than squeezed
    tight = Atoms("Fe2", positions=[(0, 0, 0), (1.585, 0, 0)], cell=[4.0, 4.0, 4.0], pbc=True)
    assert all(not find_overlaps(random_strain(tight, 0.05, rng, 0.6), 0.6) for _ in range(20))
