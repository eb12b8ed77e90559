"""Resuming a learner on another device than the one that saved the checkpoint (CPU → GPU and back).

The GPU path is exercised on the CPU with torch's ``meta`` device standing in for CUDA: a
learner whose networks live on a non-CPU device restores a checkpoint written on the CPU.
Before the fix the checkpoint was read with ``map_location = the learner's device``, which
moved the saved RNG state off the CPU and made ``Generator.set_state`` fail.
"""
from __future__ import annotations

import pytest
import torch

from common.config import load_config
from learner.checkpoint import load_checkpoint
from learner.learner import Learner


def _trained_learner(run_dir) -> Learner:
    """A CPU learner whose weights, Adam moments and sampling generator all moved away from their initial values."""
    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "run.seed=3"])
    learner = Learner(cfg, sampler=None, run_dir=run_dir, t_total=lambda: 0, device="cpu")
    for net, opt in ((learner.actor, learner.actor_opt), (learner.critic, learner.critic_opt)):
        for _ in range(2):
            opt.zero_grad()
            sum((p.double() ** 2).sum() for p in net.parameters()).backward()
            opt.step()
    torch.rand(5, generator=learner.generator)
    learner.counters.updates = 7
    learner.checkpoint()
    return learner


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")
def test_resume_on_another_device_keeps_rng_on_cpu_and_moves_weights(tmp_path):
    saved = _trained_learner(tmp_path)
    data = load_checkpoint(tmp_path)
    assert data["generator"].device.type == "cpu" and data["generator"].dtype == torch.uint8

    other = Learner(saved.config, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="meta")
    other.restore(tmp_path)  # fails with map_location="meta": set_state needs a CPU ByteTensor

    assert torch.equal(other.generator.get_state(), saved.generator.get_state())
    assert torch.equal(torch.rand(3, generator=other.generator), torch.rand(3, generator=saved.generator))
    assert other.counters.updates == 7
    assert {p.device.type for p in other.actor.parameters()} == {"meta"}
    moments = [v for state in other.actor_opt.state.values() for k, v in state.items() if k == "exp_avg"]
    assert moments and {m.device.type for m in moments} == {"meta"}


def test_resume_on_cpu_restores_weights_and_moments_exactly(tmp_path):
    saved = _trained_learner(tmp_path)
    again = Learner(saved.config, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="cpu", resume=True)
    for a, b in zip(saved.actor.state_dict().values(), again.actor.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = saved.critic_opt.state_dict()["state"], again.critic_opt.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)
    assert torch.equal(again.generator.get_state(), saved.generator.get_state())


def test_keep_checkpoints_keeps_the_newest_n_or_all(tmp_path):
    from learner.checkpoint import checkpoint_updates, list_checkpoints, save_checkpoint

    for keep, run in ((2, tmp_path / "two"), (0, tmp_path / "all")):
        for updates in (10, 20, 30, 40):
            save_checkpoint(run, updates, {"counters": {"updates": updates}}, keep=keep)
        names = [p.name for p in list_checkpoints(run)]
        assert names == (["ckpt-00000030.pt", "ckpt-00000040.pt"] if keep else
                         [f"ckpt-{u:08d}.pt" for u in (10, 20, 30, 40)])
        assert [checkpoint_updates(p) for p in list_checkpoints(run)] == ([30, 40] if keep else [10, 20, 30, 40])


def test_policy_average_is_a_running_mean_then_an_ema_and_is_what_the_checkpoint_gives(tmp_path):
    from learner.policy import load_policy

    cfg = load_config(None, ["network.channels=4", "network.num_layers=2", "run.seed=3", "learner.policy_average=3"])
    learner = Learner(cfg, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="cpu")
    name = next(k for k, v in learner.actor.state_dict().items() if v.is_floating_point() and v.numel() > 1)
    seen = []
    for step in range(1, 6):  # the actor's weights after updates 1..5, each moved by hand
        with torch.no_grad():
            learner.actor.state_dict()[name].add_(float(step))
        seen.append(learner.actor.state_dict()[name].clone())
        learner.counters.updates = step
        learner._average_policy()
    mean3 = sum(seen[:3]) / 3  # updates 1..3: the running mean
    expected = mean3 + (seen[3] - mean3) / 3  # then rate 1/3
    expected = expected + (seen[4] - expected) / 3
    assert torch.allclose(learner.policy_weights()[name], expected)
    assert not torch.allclose(learner.actor_weights()[name], expected)  # the actors still explore with the actor

    learner.checkpoint()
    assert torch.allclose(load_policy(tmp_path).weights()[name], expected)  # eval, relax and RLOptimizer get the average
    again = Learner(cfg, sampler=None, run_dir=tmp_path, t_total=lambda: 0, device="cpu", resume=True)
    assert torch.equal(again.policy_weights()[name], learner.policy_weights()[name])
    assert torch.equal(again.actor_weights()[name], learner.actor_weights()[name])

    off = load_config(None, ["network.channels=4", "network.num_layers=2", "run.seed=3"])  # the same run without it
    plain = Learner(off, sampler=None, run_dir=tmp_path / "plain", t_total=lambda: 0, device="cpu")
    assert plain.actor_average is None and torch.equal(plain.policy_weights()[name], plain.actor_weights()[name])
