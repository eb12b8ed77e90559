"""Settings that no preset sets, each shown doing what its documentation says (issue 26: a setting that
nothing uses is removed or shown at work). Each is a knob a run may want (message normalisation for a larger
radius, PER's β and ε, TD3+BC's normalisation, the teacher share's start, a GPU share, ...), and removing one
would make every existing run directory's config.toml, which holds every key, fail to load on --resume.
Real components throughout: the learner's own networks and hyper-parameters, a real Redis, a real local Ray."""
from __future__ import annotations

import dataclasses
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import redis
import torch
from ase.build import bulk

from actors.curriculum import Curriculum, load_structures
from actors.ray_actors import RemoteCoordinator, make_actor
from common.config import load_config
from helpers import cu_cluster
from learner import td3
from learner.blocks import InteractionBlock
from learner.graph import batch_graphs
from learner.heads import build_actor
from learner.learner import Learner, TrainingDiverged
from relaxrl.cli import build_parser
from relaxrl.launcher import plan_run
from replay_service.client import ReplayClient
from replay_service.server import REDIS_PASSWORD_ENV
from tests.test_replay_client import client_for, transitions
from tests.test_replay_codec import make_transition

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


# ----------------------------------------------------------------------------- network


def _first_interaction_sums(avg_num_neighbors: float) -> torch.Tensor:
    """What the actor's first interaction block feeds its output Linear: the messages summed at each atom,
    divided by network.avg_num_neighbors. The same weights for every value (torch seeded alike)."""
    cfg = load_config(TINY, [f"network.avg_num_neighbors={avg_num_neighbors}"])
    torch.manual_seed(0)
    actor = build_actor(cfg.network, cfg.env)
    block = next(m for m in actor.modules() if isinstance(m, InteractionBlock))
    seen = []
    block.lin_out.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().clone()))
    obs = make_transition(6, d=0).obs
    actor(batch_graphs([obs], cfg.network))
    return seen[0]


def test_avg_num_neighbors_divides_the_messages_summed_at_each_atom():
    at_12, at_24 = _first_interaction_sums(12.0), _first_interaction_sums(24.0)
    assert at_12.abs().max() > 0
    torch.testing.assert_close(at_24 * 2.0, at_12)


# ----------------------------------------------------------------------------- replay


def _script_calls(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_insert_chunk_splits_a_large_insert_into_smaller_reservations(redis_server):
    """replay.insert_chunk = 2: an insert of 5 transitions is reserved, stored and published in 3 pieces
    (3 times the script calls of one piece), and the table holds the same items in the same order."""
    calls = {}
    for chunk in (512, 2):
        c = client_for(redis_server, insert_chunk=chunk)
        before = _script_calls(redis_server.url)
        keys = c.insert("online", transitions(range(5)))
        calls[chunk] = _script_calls(redis_server.url) - before
        assert keys.tolist() == list(range(5))
        assert [t.reward for t in c.items("online", keys)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert calls[2] == 3 * calls[512] > 0


def test_password_file_gives_the_password_for_replay_url(tmp_path, monkeypatch):
    """replay.password_file names a file whose first line is the Redis password: `relaxrl train` connects
    with it and stores the URL without it (the --redis-password-file flag sets the same key)."""
    monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
    (tmp_path / "pw").write_text("from-the-file\nsecond line ignored\n")
    args = build_parser().parse_args(["train", "--config", TINY, "--run-dir", str(tmp_path / "run"),
                                      "--set", "replay.url=redis://127.0.0.1:6390/0",
                                      "--set", f"replay.password_file={tmp_path / 'pw'}"])
    plan = plan_run(args)
    assert plan.redis_url == "redis://:from-the-file@127.0.0.1:6390/0"
    assert "from-the-file" not in plan.cfg.replay.url


# ----------------------------------------------------------------------------- learner


def test_target_noise_by_force_scales_the_target_smoothing_noise_per_atom(tmp_path):
    """learner.target_noise_by_force: the TD target's smoothing noise on an atom is scaled by
    min(1, |F| / actors.noise_force_scale), as the actors' exploration noise; off, every atom gets the same."""
    forces = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [4.0, 0.0, 0.0]])  # eV/Å; noise_force_scale = 1
    noise = {}
    for on in (True, False):
        cfg = load_config(TINY, [f"learner.target_noise_by_force={str(on).lower()}", "actors.noise_force_scale=1.0",
                                 "learner.target_noise=0.01", "learner.target_noise_clip=1.0"])
        h = Learner(cfg, None, tmp_path / str(on), t_total=lambda: 0, device="cpu").hyper
        noise[on] = td3.target_action(torch.zeros(3, 3), h.target_noise, h.target_noise_clip, h.max_step,
                                      torch.Generator().manual_seed(0), forces=forces,
                                      force_scale=h.target_noise_force_scale)
    assert noise[False].abs().min() > 0  # off: every atom gets the Gaussian draw
    torch.testing.assert_close(noise[True], noise[False] * torch.tensor([[0.0], [0.5], [1.0]]))


def test_beta_start_is_where_the_importance_sampling_exponent_starts(tmp_path):
    """learner.beta_start: β at update 0, then linear to 1 over learner.beta_anneal_updates."""
    cfg = load_config(TINY, ["learner.beta_start=0.1", "learner.beta_anneal_updates=10"])
    learner = Learner(cfg, None, tmp_path, t_total=lambda: 0, device="cpu")
    seen = []
    for updates in (0, 5, 10, 20):
        learner.counters.updates = updates
        seen.append(learner.beta())
    assert seen == pytest.approx([0.1, 0.55, 1.0, 1.0])


def _learner_on_a_filled_replay(redis_server, tmp_path: Path, overrides: list[str]) -> tuple[Learner, ReplayClient]:
    """A learner of configs/tiny.toml (with ``overrides``) over fresh tables of a real Redis holding random
    transitions, 64 in 'expert' and 40 in 'online' (within its rate limiter's budget before any sample); the same
    weights and the same items for the same overrides."""
    cfg = load_config(TINY, overrides)
    cfg = dataclasses.replace(cfg, replay=dataclasses.replace(cfg.replay, url=redis_server.url,
                                                              namespace=f"set{uuid.uuid4().hex[:8]}"))
    replay = ReplayClient(cfg.replay.url, cfg.replay, seed=0)
    replay.create_tables(batch_size=cfg.learner.batch_size)
    for table, expert, n in (("expert", True, 64), ("online", False, 40)):
        replay.insert(table, [make_transition(4, seed=k, expert=expert, d=0) for k in range(n)])
    return Learner(cfg, replay, tmp_path / f"run-{uuid.uuid4().hex[:6]}", device="cpu"), replay


def test_priority_eps_is_added_to_every_new_priority(redis_server, tmp_path):
    """learner.priority_eps: an item the learner drew gets priority |δ| + ε; the same update with ε larger by
    0.5 gives every drawn item a priority larger by 0.5."""
    got = []
    for eps in (0.001, 0.501):
        learner, replay = _learner_on_a_filled_replay(redis_server, tmp_path, [f"learner.priority_eps={eps}"])
        learner.step()
        got.append({t: replay.priorities(t)[1] for t in ("expert", "online")})
    for table, before in got[0].items():
        drawn = before != 1.0  # the items the update drew (inserted at priority 1)
        assert drawn.any() and np.array_equal(drawn, got[1][table] != 1.0)
        np.testing.assert_allclose(got[1][table][drawn] - before[drawn], 0.5, atol=1e-6)  # float32 networks


def test_max_nonfinite_consecutive_bad_updates_stop_training_with_a_checkpoint(redis_server, tmp_path):
    """learner.max_nonfinite = 2: a critic gone non-finite makes one update return without a step, the second
    in a row stops training with TrainingDiverged naming the checkpoint it wrote."""
    learner, _ = _learner_on_a_filled_replay(redis_server, tmp_path, ["learner.max_nonfinite=2"])
    with torch.no_grad():
        for p in learner.critic.parameters():
            p.fill_(math.nan)
    assert learner.step() == {"nonfinite": 1.0}
    with pytest.raises(TrainingDiverged, match="2 consecutive non-finite losses") as e:
        learner.step()
    assert learner.counters.updates == 0 and "ckpt-00000000.pt" in str(e.value)


def test_normalize_actor_loss_measures_the_penalties_in_units_of_max_step(redis_server, tmp_path):
    """learner.normalize_actor_loss (TD3+BC): the deviation and behaviour-cloning penalties are measured in units
    of env.max_step (and −Q by mean|Q|), so λ_dev and λ_bc mean the same whatever the reward scale. The same
    first update with and without it: the same Q of the policy's moves, penalties 1/max_step² apart."""
    logs = {}
    for on in (True, False):
        learner, _ = _learner_on_a_filled_replay(redis_server, tmp_path, [
            f"learner.normalize_actor_loss={str(on).lower()}", "learner.policy_delay=1", "learner.relative_bc=0",
            "env.max_step=0.25"])
        logs[on] = learner.step()
    assert logs[True]["charts/q_pi"] == pytest.approx(logs[False]["charts/q_pi"], rel=1e-5)
    for key in ("losses/deviation", "losses/bc"):
        assert logs[False][key] > 0
        assert logs[True][key] == pytest.approx(logs[False][key] / 0.25 ** 2, rel=1e-4)
    assert logs[True]["losses/actor"] != pytest.approx(logs[False]["losses/actor"], rel=1e-3)


def test_expert_fraction_start_is_the_teacher_tables_share_of_the_first_batches(tmp_path):
    """learner.expert_fraction_start: the teacher tables' combined share of a batch at update 0 (in place of their
    table shares, which then only split it among them), moving linearly to expert_fraction_end."""
    cfg = load_config(TINY, ["learner.expert_fraction_start=0.5", "learner.expert_fraction_end=0.1",
                             "learner.expert_fraction_decay_updates=100"])
    learner = Learner(cfg, None, tmp_path, t_total=lambda: 0, device="cpu")
    shares = []
    for updates in (0, 50, 100):
        learner.counters.updates = updates
        shares.append(learner.batch_shares())
    assert shares == [pytest.approx({"expert": 0.5, "online": 0.5}), pytest.approx({"expert": 0.3, "online": 0.7}),
                      pytest.approx({"expert": 0.1, "online": 0.9})]


# ----------------------------------------------------------------------------- actors


def test_num_gpus_is_the_gpu_share_ray_reserves_for_each_actor_process(redis_server):
    """actors.num_gpus: Ray starts an actor process only where that share of a GPU is free. On a Ray node
    with no GPU an actor process asking for half of one waits; one asking for none (the default) runs."""
    cfg = load_config(TINY)
    replay = client_for(redis_server)
    train, _ = load_structures("demo", cfg.curriculum, 0)
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        name = f"settings-hub-{uuid.uuid4().hex[:8]}"
        RemoteCoordinator.options(name=name).remote(Curriculum(train, cfg.curriculum), 0, 0)
        started = {}
        for share, wait_s in ((0.0, 60.0), (0.5, 5.0)):
            actor = make_actor("online", load_config(TINY, [f"actors.num_gpus={share}"]), replay, name, 0, 0)
            started[share] = bool(ray.wait([actor.pid.remote()], timeout=wait_s)[0])
        assert started == {0.0: True, 0.5: False}
    finally:
        ray.shutdown()


def test_strain_starts_periodic_episodes_from_a_randomly_strained_cell():
    """curriculum.strain = 0.05: every episode on a periodic structure starts from its cell strained by a new
    symmetric ε (components within ±0.05), the atoms following the cell; a cluster's start is its own copy."""
    crystal, cluster = bulk("Cu", "fcc", a=3.6, cubic=True), cu_cluster(4, seed=0)
    cfg = load_config(TINY, ["curriculum.strain=0.05", "curriculum.stages=[8]"]).curriculum
    curriculum, rng = Curriculum([crystal, cluster], cfg), np.random.default_rng(0)
    strains = []
    for _ in range(40):
        a = curriculum.sample(rng)
        if not a.pbc.any():
            assert np.array_equal(a.positions, cluster.positions)
            continue
        eps = np.linalg.solve(np.asarray(crystal.cell), np.asarray(a.cell)) - np.eye(3)  # cell' = cell (1 + ε)
        np.testing.assert_allclose(eps, eps.T, atol=1e-12)
        np.testing.assert_allclose(a.get_scaled_positions(), crystal.get_scaled_positions(), atol=1e-12)
        strains.append(eps)
    assert len(strains) > 10 and np.abs(strains).max() <= 0.05
    assert len({round(float(e[0, 0]), 9) for e in strains}) == len(strains)  # a new strain for every episode
