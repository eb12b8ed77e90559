"""Neighbour lists and batched graphs (learner/graph.py) on real EMT Cu structures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import primitive_neighbor_list

import learner.graph as graph_mod
from common.config import NetworkConfig
from helpers import cu_cluster as _cu_cluster
from helpers import observe
from learner.graph import GraphError, batch_graphs, neighbor_list, with_neighbor_list


def cu_cluster(n: int, seed: int) -> Atoms:
    return _cu_cluster(n, seed, with_ni=False)


def as_set(edge_index: np.ndarray, edge_shift: np.ndarray) -> set:
    return {(int(j), int(i), tuple(int(x) for x in s)) for j, i, s in zip(edge_index[0], edge_index[1], edge_shift)}


@pytest.mark.parametrize(
    "atoms",
    [
        bulk("Cu", "fcc", a=3.61),  # one atom, many self-images
        bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1),
        bulk("Cu", "fcc", a=3.61, cubic=True) * (1, 1, 1),
    ],
    ids=["primitive", "cubic-2x1x1", "cubic"],
)
def test_periodic_neighbor_list_matches_ase(atoms: Atoms) -> None:
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=3)
    ei, es = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, max_neighbors=0)  # 0 = no cap
    i, j, S = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions, 5.0)
    assert as_set(ei, es) == as_set(np.stack([j, i]), S)
    assert not np.any((ei[0] == ei[1]) & (es == 0).all(axis=1)), "an atom is not its own neighbour"
    # periodic images of the atom itself are there for the one-atom cell
    if len(atoms) == 1:
        assert ei.shape[1] > 12


def test_slab_is_periodic_in_two_directions_only() -> None:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.pbc = (True, True, False)
    ei, es = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0, max_neighbors=0)
    assert es[:, 2].tolist() == [0] * es.shape[0]
    assert np.abs(es[:, :2]).max() >= 1


def test_cap_keeps_the_nearest_neighbours() -> None:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    full_i, full_s = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, max_neighbors=0)
    cap = 14
    ei, es = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0, max_neighbors=cap)

    def dists(e, s):
        return np.linalg.norm(atoms.positions[e[0]] + s @ atoms.cell.array - atoms.positions[e[1]], axis=1)

    d_full, d_cap = dists(full_i, full_s), dists(ei, es)
    assert (np.bincount(full_i[1]) > cap).all()
    assert (np.bincount(ei[1], minlength=len(atoms)) == cap).all()
    for r in range(len(atoms)):
        expected = np.sort(d_full[full_i[1] == r])[:cap]
        np.testing.assert_allclose(np.sort(d_cap[ei[1] == r]), expected)


def test_cluster_neighbor_list_and_ase_fallback_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    atoms = cu_cluster(12, seed=0)
    zero, nopbc = np.zeros((3, 3)), np.zeros(3, bool)
    ei, es = neighbor_list(atoms.positions, zero, nopbc, 4.0, max_neighbors=6)
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    n_within = ((d <= 4.0) & (d > 0)).sum(axis=1)
    assert (np.bincount(ei[1], minlength=12) == np.minimum(n_within, 6)).all()
    assert (es == 0).all()
    monkeypatch.setattr(graph_mod, "_DENSE_PAIR_LIMIT", 0)  # force the ASE cell-list path
    ei2, es2 = neighbor_list(atoms.positions, zero, nopbc, 4.0, max_neighbors=6)
    assert as_set(ei, es) == as_set(ei2, es2)


def test_batch_graphs_offsets_edge_vectors_and_order() -> None:
    cfg = NetworkConfig(radius=4.0, dtype="float64")
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True)
    crystal.rattle(0.05, seed=2)
    obs = [observe(cu_cluster(5, seed=1)), observe(crystal), observe(cu_cluster(3, seed=2))]
    g = batch_graphs(obs, cfg)
    assert g.n_graphs == 3 and g.n_atoms == 12
    assert g.num_atoms_per_graph.tolist() == [5, 4, 3]
    assert g.batch.tolist() == [0] * 5 + [1] * 4 + [2] * 3
    assert g.pos.dtype == torch.float64 and g.edge_index.dtype == torch.int64
    # edges never cross graphs
    assert torch.equal(g.batch[g.edge_index[0]], g.batch[g.edge_index[1]])
    # periodic edge vectors computed in torch match ASE's
    i, j, D = primitive_neighbor_list("ijD", crystal.pbc, crystal.cell.array, crystal.positions, 4.0)
    in_crystal = g.batch[g.edge_index[1]] == 1
    vec = g.edge_vectors()[in_crystal].numpy()
    np.testing.assert_allclose(np.sort(np.linalg.norm(vec, axis=1)), np.sort(np.linalg.norm(D, axis=1)), atol=1e-12)
    # actions line up by concatenation (the learner's batch); splitting at the atom counts undoes it (Policy.act_batch)
    acts = [np.full((o.n_atoms, 3), k, dtype=float) for k, o in enumerate(obs)]
    a = np.concatenate(acts)
    assert a.shape == (12, 3) and np.array_equal(a[:, 0], g.batch.numpy())
    assert [t.shape[0] for t in np.split(a, np.cumsum(g.num_atoms_per_graph.numpy())[:-1])] == [5, 4, 3]
    g32 = g.to("cpu", dtype=torch.float32)
    assert g32.pos.dtype == torch.float32 and g32.numbers.dtype == torch.int64 and g32.n_graphs == 3


def test_precomputed_edges_are_used() -> None:
    cfg = NetworkConfig(dtype="float32")
    o = observe(cu_cluster(4, seed=5))
    o.edge_index = np.array([[1, 2], [0, 0]])
    o.edge_shift = np.zeros((2, 3), dtype=np.int64)
    g = batch_graphs([observe(cu_cluster(3, seed=6)), o], cfg)
    assert g.edge_index[:, -2:].tolist() == [[4, 5], [3, 3]]
    assert g.pos.dtype == torch.float32


def test_attached_lists_give_the_same_graph() -> None:
    cfg = NetworkConfig(dtype="float64")
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    crystal.rattle(0.1, seed=8)
    obs = [observe(cu_cluster(8, seed=3)), observe(crystal)]
    attached = [with_neighbor_list(o, cfg) for o in obs]
    assert obs[0].edge_index is None and attached[0].edge_index is not None  # a copy, input untouched
    g, g_att = batch_graphs(obs, cfg), batch_graphs(attached, cfg)
    assert torch.equal(g.edge_index, g_att.edge_index) and torch.equal(g.edge_shift, g_att.edge_shift)


def test_bad_observations_are_named() -> None:
    o = observe(cu_cluster(3, seed=0))
    with pytest.raises(GraphError, match="env_input_dim"):
        batch_graphs([o], NetworkConfig(), env_input_dim=2)
    o.numbers = np.array([29, 29, 120])
    with pytest.raises(GraphError, match="observation 0.*max_species"):
        batch_graphs([o], NetworkConfig())
    with pytest.raises(GraphError, match="at least one"):
        batch_graphs([], NetworkConfig())


def _with_cell_rows(atoms: Atoms, k: int, seed: int):
    """The observation of a periodic cell whose cell relaxes too: FrechetCellFilter rows under EMT."""
    from ase.calculators.emt import EMT
    from ase.filters import FrechetCellFilter

    rng = np.random.default_rng(seed)
    a = atoms.copy()
    a.calc = EMT()
    rows = FrechetCellFilter(a).get_forces()  # [n + 3, 3]
    o = observe(a)
    o.forces, o.cell_forces = rows[:len(a)], rows[len(a):]
    o.history, o.cell_history = rng.normal(size=(len(a), 6 * k)), rng.normal(size=(3, 6 * k))
    return o


def test_cell_rows_follow_the_atoms_graph_by_graph() -> None:
    cfg = NetworkConfig(radius=4.0)
    obs = [_with_cell_rows(bulk("Cu", "fcc", a=3.7, cubic=True), 2, 0),
           _with_cell_rows(bulk("Cu", "fcc", a=3.5) * (2, 1, 1), 2, 1)]
    g = batch_graphs(obs, cfg, dtype="float64")
    assert g.has_cell_rows and g.n_rows == 6 + 6
    assert g.row_batch().tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    forces = g.row_forces().numpy()
    np.testing.assert_array_equal(forces[:6], np.concatenate([o.forces for o in obs]))
    np.testing.assert_array_equal(forces[6:], np.concatenate([o.cell_forces for o in obs]))
    np.testing.assert_array_equal(g.row_history().numpy()[9:], obs[1].cell_history)
    atoms_part, cell_part = g.split_rows(g.row_forces())
    assert atoms_part.shape == (6, 3) and cell_part.shape == (2, 3, 3)
    np.testing.assert_array_equal(cell_part[1].numpy(), obs[1].cell_forces)
    assert obs[0].fmax == pytest.approx(np.linalg.norm(np.concatenate([obs[0].forces, obs[0].cell_forces]), axis=1).max())
    g32 = g.to(dtype=torch.float32)
    assert g32.cell_forces.dtype == torch.float32 and g32.cell_history.shape == (2, 3, 12)
    plain = batch_graphs([observe(bulk("Cu", "fcc", a=3.6))], cfg)
    assert not plain.has_cell_rows and plain.cell_forces is None and plain.to(dtype=torch.float64).cell_forces is None
    assert torch.equal(plain.row_batch(), plain.batch)
    with pytest.raises(GraphError, match="one env.relax_cell"):
        batch_graphs([obs[0], observe(bulk("Cu", "fcc", a=3.6))], cfg)
    with pytest.raises(GraphError, match="per-row tensor of 6 rows"):
        g.split_rows(g.forces)
    obs[0].cell_history = np.zeros((3, 6))
    with pytest.raises(GraphError, match=r"observation 0: cell_history has shape \(3, 6\)"):
        batch_graphs(obs, cfg)
