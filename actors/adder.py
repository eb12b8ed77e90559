"""The adder: an actor's one way into the replay (Acme's ``adders``).

    adder = ReplayAdder(client, config.replay.tables, n_envs=4, n_step=5, gamma=0.95, insert_batch=16)
    adder.add(i, "policy", transition)       # environment i's one-step transition; its source: 'teacher' or 'policy'
    adder.close()                            # the actor stops: every window drained, every buffer inserted

Per environment an :class:`NStepWindow` turns one-step transitions into n-step ones (Ape-X's
n-step returns). Each one that is ready goes to every table whose spec has its source
(``TableSpec.source``: the expert actors' teacher steps to the ``teacher`` tables, every policy
move to the ``policy`` ones), buffered per table and inserted ``insert_batch`` at a time through
``writer.insert(table, transitions, priorities)`` (the replay client, or anything with that method).
"""
from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence

from common.errors import RelaxRLError
from common.names import SOURCES
from common.replay_tables import TableSpec, tables_of
from common.transition import Transition
from replay_service.errors import InsertStopped

__all__ = ["NStepWindow", "ReplayAdder", "returns_to_go"]


def returns_to_go(rewards: Sequence[float], gamma: float) -> list[float]:
    """G_t = Σ_k γ^k r_{t+k} for every step t of an episode's rewards (no bootstrap after the last)."""
    out, g = [], 0.0
    for r in reversed(rewards):
        g = r + gamma * g
        out.append(g)
    return out[::-1]


class NStepWindow:
    """One environment's last ``n`` steps, turned into n-step transitions (Ape-X's n-step returns).

    ``push`` takes each one-step transition and returns what is ready to store: once the window holds n steps,
    the oldest leaves as one transition from its state and move, with reward Σ_k γ^k r_k over the n steps,
    ``next_obs`` the state after the n-th and ``n_steps`` = n; when an episode ends every step still in the window
    leaves, each spanning the steps to the end (a terminated end is not bootstrapped; a truncated one is, from its
    last state). A step whose move cannot be stored (``storable`` false: a non-finite proposal) still counts in
    the others' returns. ``drain`` empties the window when the actor stops, so no step is lost. n = 1 returns
    every transition as it came. Each transition keeps the source (teacher or policy) of its first step."""

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.pending: deque[tuple[str, Transition, bool]] = deque()

    def push(self, source: str, t: Transition, storable: bool = True) -> list[tuple[str, Transition]]:
        self.pending.append((source, t, storable))
        out: list[tuple[str, Transition]] = []
        while len(self.pending) >= self.n or (self.pending and (t.terminated or t.truncated)):
            out += self._pop()
        return out

    def drain(self) -> list[tuple[str, Transition]]:
        out: list[tuple[str, Transition]] = []
        while self.pending:
            out += self._pop()
        return out

    def _pop(self) -> list[tuple[str, Transition]]:
        window = [t for _, t, _ in self.pending]
        source, first, storable = self.pending.popleft()
        if not storable:
            return []
        if len(window) == 1:
            return [(source, first)]
        last = window[-1]
        reward = returns_to_go([t.reward for t in window], self.gamma)[0]
        return [(source, dataclasses.replace(first, reward=reward, terminated=last.terminated, truncated=last.truncated,
                                             next_obs=last.next_obs, n_steps=len(window)))]


class ReplayAdder:
    """n-step windows per environment, buffers per table, batched inserts (see the module docstring).

    ``stop``: a callable that turns true when the actor is shutting down; an insert still waiting for
    the rate limiter then gives up (the learner has stopped sampling, so it would wait for its timeout)
    and its items are dropped (counted in ``dropped``). With ``stop`` an insert waits for the rate limiter
    as long as it takes (a learner paused for a checkpoint or a live evaluation on a slow calculator),
    as Reverb's writers do: a timeout there ended the actor's loop while its process lived on, and the run
    went on without that actor. Without ``stop`` the client's 60 s timeout stays.
    """

    def __init__(self, writer, tables: Sequence[TableSpec], n_envs: int, n_step: int, gamma: float, insert_batch: int,
                 stop: Callable[[], bool] | None = None):
        self.writer, self.insert_batch, self.stop = writer, insert_batch, stop
        self.dropped = 0
        self.routes = {source: tables_of(tables, source) for source in SOURCES}
        self.windows = [NStepWindow(n_step, gamma) for _ in range(n_envs)]
        self.pending: dict[str, list[Transition]] = {t.name: [] for t in tables}

    def add(self, env: int, source: str, transition: Transition, storable: bool = True) -> None:
        """Environment ``env``'s one-step transition; what its window releases is buffered, full buffers inserted."""
        for src, t in self.windows[env].push(source, transition, storable):
            self._buffer(src, t)
        self.flush()

    def _buffer(self, source: str, t: Transition) -> None:
        names = self.routes.get(source)
        if not names:
            raise RelaxRLError(f"no replay table has source = {source!r}, so this {source} step has nowhere to go; "
                               f"add one to replay.tables (sources: {', '.join(SOURCES)})")
        for name in names:
            self.pending[name].append(t)

    def flush(self, force: bool = False) -> None:
        """One ``insert`` per table whose buffer is full (``force``: every non-empty buffer)."""
        for table, items in self.pending.items():
            if items and (force or len(items) >= self.insert_batch):
                try:
                    if self.stop is None:
                        self.writer.insert(table, items, None)
                    else:
                        self.writer.insert(table, items, None, timeout=None, stop=self.stop)
                except InsertStopped as e:
                    self.dropped += len(items) - len(getattr(e, "inserted_keys", ()))
                items.clear()

    def close(self) -> None:
        """The actor stops: what the windows hold leaves as shorter n-step transitions, every buffer is inserted."""
        for window in self.windows:
            for source, t in window.drain():
                self._buffer(source, t)
        self.flush(force=True)
