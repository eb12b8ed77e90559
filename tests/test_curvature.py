"""The curvature loss (learner/curvature.py) and what it teaches the 'model-hessian' head; real EMT Hessians."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from actors.hessian import finite_difference_hessian, held_mask, hessian_columns
from common.config import EnvConfig, NetworkConfig
from common.observation import Observation
from helpers import cu_cluster
from learner.curvature import CurvatureTargets, curvature_loss, curvature_targets
from learner.graph import batch_graphs
from learner.heads import build_actor
from learner.quasi_newton import ModelHessian, fit_model_hessian

CFG = NetworkConfig(channels=8, num_layers=2, num_basis=6, radial_hidden=16, dtype="float64", actor_head="model-hessian",
                    path_history=True, step_size=0.0143)


def probed(structures, picks):
    """(observations, probes, atom counts) of EMT structures with the Hessian columns of the picked atoms."""
    obs, probes = [], []
    for atoms, idx in zip(structures, picks):
        atoms.calc = EMT()
        o = Observation.from_atoms(atoms, forces=atoms.get_forces(apply_constraint=True))
        o.free = held_mask(atoms)
        o.history = np.zeros((len(atoms), 6))
        obs.append(o)
        probes.append(None if idx is None else (np.asarray(idx), hessian_columns(atoms, EMT(), np.asarray(idx))))
    return obs, probes, [len(a) for a in structures]


def pair_form_fit(atoms, sizes, g) -> ModelHessian:
    """The batch's model Hessian fitted, structure by structure, to each one's full finite-difference EMT Hessian
    (:func:`fit_model_hessian`, floor 0.5 eV/Å²): the pair form with a perfect network."""
    vec = g.edge_vectors()
    fits, offset = [], 0
    for a, n in zip(atoms, sizes):
        sel = (g.edge_index[1] >= offset) & (g.edge_index[1] < offset + n)
        fits.append(fit_model_hessian(torch.as_tensor(finite_difference_hessian(a, EMT(), np.ones(3 * n, bool))),
                                      g.edge_index[:, sel] - offset, vec[sel], None, 0.5))
        offset += n
    return ModelHessian(torch.cat([f.diag for f in fits]), g.edge_index, torch.cat([f.alpha for f in fits]),
                        torch.cat([f.beta for f in fits]), vec / vec.norm(dim=1, keepdim=True), g.free)


def structures():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.1, seed=1)
    slab = fcc111("Pt", (2, 2, 3), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    slab.rattle(0.1, seed=2)
    return [a, cu_cluster(6, seed=3), slab]


def test_a_model_hessian_scores_zero_against_its_own_columns_and_a_fit_beats_a_guess() -> None:
    atoms = structures()
    obs, probes, sizes = probed(atoms, [[0, 2], None, [5, 9]])
    g = batch_graphs(obs, CFG)
    t = curvature_targets(probes, sizes)
    assert t.atoms.tolist() == [0, 2, 4 + 6 + 5, 4 + 6 + 9]  # batch-global: the cluster's 6 atoms carry no probe
    vec = g.edge_vectors()
    rng = np.random.default_rng(0)
    guess = ModelHessian(torch.as_tensor(rng.uniform(0.5, 2, g.n_atoms)), g.edge_index,
                         torch.as_tensor(rng.uniform(0, 3, g.n_edges)), torch.as_tensor(rng.uniform(0, 3, g.n_edges)),
                         vec / vec.norm(dim=1, keepdim=True), g.free)
    # the guess's own columns (through matvec) as targets: the loss is exactly zero
    cols = []
    for p, a in enumerate(t.atoms.tolist()):
        unit = torch.zeros(g.n_atoms, 3, 3, dtype=torch.float64)
        unit[a] = torch.eye(3, dtype=torch.float64)
        cols.append(guess.matvec(unit)[t.row_atom[t.row_probe == p]])
    own = dataclasses.replace(t, blocks=torch.cat(cols))
    assert float(curvature_loss(guess, own)) < 1e-20
    # the model fitted to each structure's full Hessian is far closer to the measured columns than the guess
    fit = pair_form_fit(atoms, sizes, g)
    assert float(curvature_loss(fit, t)) < 0.5 < 3.0 < float(curvature_loss(guess, t))


def test_rows_and_coordinates_a_constraint_holds_do_not_count() -> None:
    atoms = structures()[2:]  # the slab: atoms 0-3 fixed
    obs, probes, sizes = probed(atoms, [[5, 9]])
    g = batch_graphs(obs, CFG)
    t = curvature_targets(probes, sizes)
    model = build_actor(CFG, EnvConfig(history_steps=1)).model_hessian(g)
    base = float(curvature_loss(model, t))
    blocks = t.blocks.clone()
    blocks[torch.isin(t.row_atom, torch.tensor([0, 1, 2, 3]))] += 100.0  # nonsense in the fixed atoms' rows
    assert float(curvature_loss(model, CurvatureTargets(t.atoms, t.first, t.row_start, t.row_probe, t.row_atom,
                                                        blocks))) == base


def test_the_model_hessian_head_learns_the_curvature_it_is_shown() -> None:
    torch.manual_seed(0)
    atoms = structures()
    obs, probes, sizes = probed(atoms, [[0, 1, 2, 3], [0, 2, 4], [4, 6, 8, 10]])
    g = batch_graphs(obs, CFG)
    t = curvature_targets(probes, sizes)
    actor = build_actor(dataclasses.replace(CFG, dtype="float32"), EnvConfig(history_steps=1))
    g = g.to(dtype=torch.float32)
    opt = torch.optim.Adam(actor.model_hessian_readout(), lr=1e-2)  # the readout alone: the trunk's features as they are
    first = curvature_loss(actor.model_hessian(g), t)
    for _ in range(100):
        loss = curvature_loss(actor.model_hessian(g), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = curvature_loss(actor.model_hessian(g), t)
    assert float(last) < 0.05 * float(first) and float(last) < 0.8


def test_periodic_images_of_a_pair_are_fitted_together() -> None:
    """In a 4-atom fcc cell every pair of atoms meets through many periodic images, whose blocks H_rs sums: fitted
    together the pair form reproduces the measured columns (the curvature loss the learner minimises); each image
    fitted alone to an equal share cannot add its directions up to the pair's block."""
    atoms = structures()[:1]
    obs, probes, sizes = probed(atoms, [[0, 1, 2, 3]])
    g = batch_graphs(obs, CFG)
    t = curvature_targets(probes, sizes)
    vec = g.edge_vectors()
    full = torch.as_tensor(finite_difference_hessian(atoms[0], EMT(), np.ones(12, bool)))
    images = torch.unique(g.edge_index[1] * 4 + g.edge_index[0], return_counts=True)[1]
    assert int(images.max()) > 4  # the case at hand: many images per pair
    joint = fit_model_hessian(full, g.edge_index, vec, None, 0.5)
    alone = fit_model_hessian(full, g.edge_index, vec, None, 0.5, joint_images=False)
    assert float(curvature_loss(joint, t)) < 0.05 < 0.2 < float(curvature_loss(alone, t))
    assert bool((joint.alpha >= 0).all() and (joint.beta >= 0).all())  # still positive semi-definite edge by edge


def test_rank_one_terms_fit_the_coupling_a_pair_potentials_form_cannot_hold() -> None:
    """EMT is many-body, so a pair's Hessian block is no αI + βr̂r̂ᵀ: the best pair-form fit leaves a residual that
    edge blocks with rank-one terms (network.edge_vectors) fit further (any positive semi-definite block with K = 3)."""
    torch.manual_seed(0)
    atoms = structures()[:2]
    obs, probes, sizes = probed(atoms, [[0, 1, 2, 3], [0, 2, 4]])
    g = batch_graphs(obs, CFG)
    t = curvature_targets(probes, sizes)
    pair = pair_form_fit(atoms, sizes, g)

    def fitted(rank_one: bool) -> float:
        """The loss after Adam on the edge blocks from the pair-form fit: α, β (≥ 0), and rank-one terms or not."""
        alpha, beta = pair.alpha.clone().requires_grad_(), pair.beta.clone().requires_grad_()
        vectors = (1e-3 * torch.randn(g.n_edges, 3, 3, dtype=torch.float64)).requires_grad_()
        opt = torch.optim.Adam([alpha, beta] + ([vectors] if rank_one else []), lr=2e-2)
        for _ in range(300):
            model = dataclasses.replace(pair, alpha=alpha.clamp_min(0.0), beta=beta.clamp_min(0.0),
                                        vectors=vectors if rank_one else None)
            loss = curvature_loss(model, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss)

    pair_form, general = fitted(False), fitted(True)
    assert general < 0.85 * pair_form <= float(curvature_loss(pair, t)), (general, pair_form)
