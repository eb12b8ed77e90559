"""The learner: ``step()`` is exactly one TD3 update, ``run()`` the loop (Acme's shape).

It reads through one sampler (``sample`` / ``update_priorities`` / ``stats`` of a
``replay_service.client.ReplayClient``), publishes weights through one callable, and writes
checkpoints and ``metrics.jsonl`` into the run directory. Nothing here knows about Ray.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.config import to_dict
from common.correction import correct_on_pairs
from common.errors import RelaxRLError
from common.names import SOURCES, TEACHER
from common.replay_tables import batch_shares, tables_of
from common.schedules import linear
from learner import td3
from learner.checkpoint import (
    CheckpointError,
    check_weights_dtype,
    list_checkpoints,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from learner.critic import TwinCritic
from learner.curvature import CurvatureTargets, curvature_targets
from learner.graph import batch_graphs, stack_rows, torch_dtype
from learner.heads import initial_actor


def corrected_moves(graph, proposed: torch.Tensor, env_cfg) -> torch.Tensor:
    """The environment's correction (``common.correction``) of ``proposed`` [n_rows, 3] for every graph of
    a batch at once, with the graph edges as the candidate pairs (the neighbour radius covers the collision
    distance; cell rows, when the cells relax, are capped only); no gradient. [n_rows, 3] on the proposal's
    device."""
    receiver, sender = graph.edge_index[1].cpu().numpy(), graph.edge_index[0].cpu().numpy()
    r0 = graph.edge_vectors().detach().cpu().double().numpy()  # [E, 3] Å, receiver → sender image
    move = correct_on_pairs(proposed.detach().cpu().double().numpy(), receiver, sender, r0,
                            graph.numbers.cpu().numpy(), env_cfg)
    return torch.as_tensor(move, dtype=proposed.dtype, device=proposed.device)


def actor_param_groups(actor: torch.nn.Module, lc) -> list[dict]:
    """The actor's Adam parameter groups: a head's ``model_hessian_readout`` (the small layers that turn trunk
    features into a model Hessian, supervised by the curvature loss) at ``learner.curvature_lr``, everything
    else at ``learner.actor_lr``."""
    readout = list(getattr(actor, "model_hessian_readout", lambda: [])())
    ids = {id(p) for p in readout}
    rest = [p for p in actor.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": lc.actor_lr}]
    if readout:
        groups.append({"params": readout, "lr": lc.curvature_lr})
    return groups


class TrainingDiverged(RelaxRLError):
    """Too many consecutive non-finite losses; the last good weights were checkpointed."""


def truncate_metrics(path: Path, updates: int) -> int:
    """Keep the rows of a run's JSON-lines log (``metrics.jsonl``, ``live_eval.jsonl``) up to update ``updates`` (the
    checkpoint a run resumes from) and drop the rest, and any line a kill cut short; returns how many lines were
    dropped. Atomic (a temporary file replaces it), so a crash leaves either the old file or the new one."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            keep = int(row["updates"]) <= updates
        except (ValueError, TypeError, KeyError):
            keep = False
        if keep:
            kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RelaxRLError("learner.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass
class Counters:
    updates: int = 0
    t_total: int = 0
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    sample_wait_s: float = 0.0
    update_s: float = 0.0


def _cpu_copy(module: torch.nn.Module) -> dict:
    """A module's state dict as detached CPU copies (safe to publish while the module trains on)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Learner:
    """One central TD3 learner.

    Args:
        config: the run's ``RunConfig``.
        sampler: replay client (``sample``, ``update_priorities``, ``stats``).
        run_dir: where checkpoints and metrics.jsonl go.
        publish: ``publish(version, actor_state)`` called every ``publish_every`` updates.
        t_total: callable giving the environment steps taken so far (default: replay inserts).
        extra_metrics: callable whose dict is merged into every metrics row (actor-side statistics).
        resume: continue from the newest checkpoint in ``run_dir``.
    """

    def __init__(self, config, sampler, run_dir: str | Path, publish: Callable[[int, dict], None] | None = None,
                 t_total: Callable[[], int] | None = None, extra_metrics: Callable[[], dict] | None = None,
                 resume: bool = False, device: str | None = None):
        self.config, self.lc = config, config.learner
        self.sampler = sampler
        self.run_dir = Path(run_dir)
        self.publish = publish
        self.extra_metrics = extra_metrics
        self._t_total_fn = t_total
        self.device = pick_device(device or self.lc.device)
        dtype = torch_dtype(config.network.dtype)
        self.dtype = dtype
        self.actor = initial_actor(config).to(self.device, dtype)  # seeds torch: the critic comes from the same stream
        self.critic = TwinCritic(config.network, config.env).to(self.device, dtype)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        for p in list(self.actor_target.parameters()) + list(self.critic_target.parameters()):
            p.requires_grad_(False)
        # the policy's weights (learner.policy_average): a mean of the actor's, never trained itself
        self.actor_average = copy.deepcopy(self.actor).requires_grad_(False) if self.lc.policy_average else None
        self.actor_opt = torch.optim.Adam(actor_param_groups(self.actor, self.lc), lr=self.lc.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=self.lc.critic_lr)
        self.hyper = td3.TD3Hyper(gamma=self.lc.gamma, tau=self.lc.tau, target_noise=self.lc.target_noise,
                                  target_noise_clip=self.lc.target_noise_clip, max_step=config.env.max_step,
                                  lambda_dev=self.lc.lambda_dev, grad_clip=self.lc.grad_clip,
                                  normalize=self.lc.normalize_actor_loss, relative_bc=self.lc.relative_bc,
                                  target_noise_force_scale=(config.actors.noise_force_scale
                                                            if self.lc.target_noise_by_force else 0.0),
                                  curvature_weight=self.lc.curvature_weight, q_weight=self.lc.actor_q_weight)
        self.generator = torch.Generator().manual_seed(config.run.seed + 1)
        self._correct = lambda graph, proposed: corrected_moves(graph, proposed, config.env)
        self.teacher_tables = tables_of(config.replay.tables, TEACHER)  # their items with a_expert are cloned
        self.counters = Counters()
        self.last_logs: dict[str, float] = {}
        self._window: dict[str, list[float]] = {}
        self._started = time.monotonic()
        # a sample waits as long as the stall watch lets actors produce nothing (slow calculators on a busy machine
        # take minutes to fill min_size_to_sample); run.actor_stall_s = 0 (never stop) keeps 300 s as a floor
        self.sample_timeout_s = max(300.0, float(config.run.actor_stall_s))
        if resume and list_checkpoints(self.run_dir):
            self.restore(self.run_dir)

    # -- schedules ---------------------------------------------------------------------------
    def expert_fraction(self) -> float:
        """The teacher tables' combined share of the next batch (learner.expert_fraction_*)."""
        lc = self.lc
        return linear(lc.expert_fraction_start, lc.expert_fraction_end, lc.expert_fraction_decay_updates, self.counters.updates)

    def batch_shares(self) -> dict[str, float]:
        """Each replay table's share of the next batch: the specs' shares, the teacher tables' set by
        :meth:`expert_fraction` (``common.replay_tables.batch_shares``)."""
        return batch_shares(self.config.replay.tables, self.expert_fraction())

    def bc_weight(self) -> float:
        return linear(self.lc.bc_start, self.lc.bc_end, self.lc.bc_decay_updates, self.counters.updates)

    def beta(self) -> float:
        return linear(self.lc.beta_start, 1.0, self.lc.beta_anneal_updates, self.counters.updates)

    def t_total(self) -> int:
        """Environment steps so far: the ``t_total`` callable's, else the replay's inserts (every step goes to each
        table of its source, so one table per source counts)."""
        if self._t_total_fn is not None:
            return int(self._t_total_fn())
        stats = self.sampler.stats()
        firsts = [names[0] for names in (tables_of(self.config.replay.tables, s) for s in SOURCES) if names]
        return int(sum(stats.get(name, {}).get("inserts", 0) for name in firsts))

    # -- one update ----------------------------------------------------------------------------
    def _to_batch(self, info, transitions) -> td3.TD3Batch:
        dev, dt = self.device, self.dtype
        obs = [t.obs for t in transitions]
        nxt = [t.next_obs for t in transitions]
        n_env = self.config.env.env_input_dim
        graph = batch_graphs(obs, self.config.network, device=dev, dtype=dt, env_input_dim=n_env)
        next_graph = batch_graphs(nxt, self.config.network, device=dev, dtype=dt, env_input_dim=n_env)

        counts = [o.n_atoms for o in obs]

        def cat(arrays):  # per-transition rows → the batch's row order (atoms, then cell rows; learner/graph.py)
            return torch.as_tensor(stack_rows(arrays, counts), device=dev, dtype=dt)

        expert = [t.expert_action if t.expert_action is not None else np.zeros_like(t.action) for t in transitions]
        is_expert = np.array([t.expert_action is not None for t in transitions]) & np.isin(info.table, self.teacher_tables)
        return td3.TD3Batch(
            graph=graph, next_graph=next_graph,
            action=cat([t.action for t in transitions]),
            actual_move=cat([t.actual_move for t in transitions]),
            expert_action=cat(expert),
            is_expert=torch.as_tensor(is_expert, device=dev),
            reward=torch.as_tensor([t.reward for t in transitions], device=dev, dtype=dt),
            terminated=torch.as_tensor([float(t.terminated) for t in transitions], device=dev, dtype=dt),
            weight=torch.as_tensor(np.asarray(info.weight, dtype=np.float64), device=dev, dtype=dt),
            n_steps=torch.as_tensor([float(t.n_steps) for t in transitions], device=dev, dtype=dt),
            row_batch=graph.row_batch(), next_row_forces=next_graph.row_forces(),
            curvature=self._curvature(transitions),
        )

    def _curvature(self, transitions) -> CurvatureTargets | None:
        """The batch's curvature targets (items with Hessian columns; learner/curvature.py), on the device."""
        if not self.hyper.curvature_weight:
            return None
        probes = [(t.probe_atoms, t.probe_columns) if t.probe_atoms is not None else None for t in transitions]
        targets = curvature_targets(probes, [t.obs.n_atoms for t in transitions])
        return None if targets is None else targets.to(self.device, self.dtype)

    def step(self) -> dict[str, float]:
        """Exactly one update: sample, TD3 step, new priorities; publish/checkpoint/log on schedule."""
        c, lc = self.counters, self.lc
        t0 = time.monotonic()
        info, transitions = self.sampler.sample(lc.batch_size, self.batch_shares(), beta=self.beta(),
                                                 timeout=self.sample_timeout_s)
        t1 = time.monotonic()
        batch = self._to_batch(info, transitions)
        update_actor = (c.updates + 1) % lc.policy_delay == 0
        logs, td_abs = td3.td3_update(batch, self.actor, self.critic, self.actor_target, self.critic_target,
                                      self.actor_opt, self.critic_opt, self.hyper, self.bc_weight(), update_actor,
                                      self.generator, correct=self._correct)
        if logs.pop("nonfinite", 0.0):
            c.nonfinite_total += 1
            c.nonfinite_streak += 1
            if c.nonfinite_streak >= lc.max_nonfinite:
                path = self.checkpoint()
                raise TrainingDiverged(f"{c.nonfinite_streak} consecutive non-finite losses at update {c.updates}; "
                                       f"the last good weights are in {path}. Lower learner.actor_lr/critic_lr or "
                                       "check the rewards in metrics.jsonl")
            return {"nonfinite": 1.0}
        c.nonfinite_streak = 0
        priorities = td3.new_priorities(td_abs, lc.priority_eps).cpu().double().numpy()
        tables = np.asarray(info.table)
        for table in np.unique(tables):
            sel = tables == table
            self.sampler.update_priorities(str(table), np.asarray(info.key)[sel], priorities[sel])
        c.updates += 1
        self._average_policy()
        t2 = time.monotonic()
        c.sample_wait_s += t1 - t0
        c.update_s += t2 - t1
        logs["charts/actual_move"] = float(batch.actual_move.norm(dim=-1).mean())
        logs["charts/bc_weight"] = self.bc_weight()
        logs["charts/expert_fraction"] = float(np.isin(tables, self.teacher_tables).mean())
        logs["charts/beta"] = self.beta()
        for k, v in logs.items():
            self._window.setdefault(k, []).append(v)
        if self.publish is not None and c.updates % lc.publish_every == 0:
            self.publish(c.updates, self.actor_weights())
        if c.updates % lc.log_every == 0:
            self.log_row()
        if c.updates % lc.checkpoint_every == 0:
            self.checkpoint()
        self.last_logs = logs
        return logs

    def run(self, should_stop: Callable[[], bool] = lambda: False, on_update: Callable[[dict], None] | None = None) -> None:
        """Update until ``max_updates``, ``time_limit_s`` or ``should_stop()``; always ends with a checkpoint."""
        lc = self.lc
        start = time.monotonic()
        try:
            while not should_stop():
                if lc.max_updates and self.counters.updates >= lc.max_updates:
                    break
                if lc.time_limit_s and time.monotonic() - start >= lc.time_limit_s:
                    break
                logs = self.step()
                if on_update is not None:
                    on_update(logs)
        finally:
            self.checkpoint()

    def _average_policy(self) -> None:
        """Move the policy's weights toward the actor's (learner.policy_average): the running mean of the actor after
        updates 1..t while t ≤ N, then an exponential moving average with rate 1/N."""
        if self.actor_average is None:
            return
        with torch.no_grad():  # TD3's target update with the average's rate
            td3.polyak_update(self.actor_average, self.actor, 1.0 / min(self.counters.updates, self.lc.policy_average))

    # -- outputs --------------------------------------------------------------------------------
    def actor_weights(self) -> dict:
        """The actor's weights (what the actors explore with), CPU copies."""
        return _cpu_copy(self.actor)

    def policy_weights(self) -> dict:
        """The policy's weights: the actor's average under learner.policy_average, else the actor's; CPU copies."""
        return _cpu_copy(self.actor_average if self.actor_average is not None else self.actor)

    def log_row(self) -> dict[str, Any]:
        """Append one row to metrics.jsonl: window means of the update scalars plus counters and extras."""
        c = self.counters
        c.t_total = self.t_total()
        row: dict[str, Any] = {"updates": c.updates, "t_total": c.t_total, "time_s": round(time.monotonic() - self._started, 3),
                               "nonfinite_total": c.nonfinite_total}
        row.update({k: float(np.mean(v)) for k, v in self._window.items() if v})
        busy = c.sample_wait_s + c.update_s
        row["charts/sample_wait_share"] = c.sample_wait_s / busy if busy else 0.0
        self._window.clear()
        if self.extra_metrics is not None:
            row.update(self.extra_metrics())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}) + "\n")
        self.last_row = row
        return row

    def checkpoint(self) -> Path:
        c = self.counters
        try:
            c.t_total = self.t_total()
        except Exception:  # replay unreachable at shutdown: keep the last known value
            pass
        return save_checkpoint(self.run_dir, c.updates, {
            "config": to_dict(self.config),
            "actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(), "critic_target": self.critic_target.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "counters": {"updates": c.updates, "t_total": c.t_total, "nonfinite_total": c.nonfinite_total},
            "generator": self.generator.get_state(),
            **({} if self.actor_average is None else {"actor_average": self.actor_average.state_dict()}),
        }, keep=self.lc.keep_checkpoints)

    def restore(self, path: str | Path) -> None:
        """Continue from a checkpoint, whatever device wrote it and whatever device this learner is on.

        Everything is read onto the CPU; ``load_state_dict`` then copies the weights and the
        optimizer moments onto the networks' device, and the sampling generator's state stays
        a CPU byte tensor (``Generator.set_state`` accepts nothing else).
        """
        data = load_checkpoint(path, map_location="cpu")  # refuses another run's checkpoint (run.id)
        ckpt_id, ckpt_name = run_identity(data["config"])
        if ckpt_id and self.config.run.id and ckpt_id != self.config.run.id:
            raise CheckpointError(f"{data['path']} belongs to run {ckpt_name!r} (id {ckpt_id}), not to the run being "
                                  f"resumed ({self.config.run.name!r}, id {self.config.run.id}); resume the run it "
                                  "came from, or start a new run")
        for entry in ("actor", "critic", "actor_target", "critic_target", "actor_average"):
            if isinstance(data.get(entry), dict):
                check_weights_dtype(data["path"], entry, data[entry], self.dtype, "network.dtype")
        try:
            self.actor.load_state_dict(data["actor"])
            self.critic.load_state_dict(data["critic"])
            self.actor_target.load_state_dict(data["actor_target"])
            self.critic_target.load_state_dict(data["critic_target"])
            self.actor_opt.load_state_dict(data["actor_opt"])
            self.critic_opt.load_state_dict(data["critic_opt"])
            if self.actor_average is not None:  # a run that had no average (policy_average set at the resume) starts one
                self.actor_average.load_state_dict(data.get("actor_average", data["actor"]))
        except (KeyError, RuntimeError, ValueError) as e:  # another network size, or a policy-only checkpoint
            raise CheckpointError(f"{data['path']} does not fit this run's networks ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200]}); resume without --set network.* overrides, "
                                  "or start a new run") from None
        counters = data["counters"]
        self.counters.updates = int(counters["updates"])
        self.counters.t_total = int(counters["t_total"])
        self.counters.nonfinite_total = int(counters.get("nonfinite_total", 0))
        if "generator" in data:
            self.generator.set_state(torch.as_tensor(data["generator"], dtype=torch.uint8, device="cpu"))
        # rows a killed run logged after this checkpoint would make the curves run backwards: the resumed run
        # logs those updates again, from the checkpoint's t_total
        self.dropped_rows = truncate_metrics(self.run_dir / "metrics.jsonl", self.counters.updates)
