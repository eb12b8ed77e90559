"""The replay client: what actors (insert) and the learner (sample, update_priorities) call.

    client = ReplayClient("redis://127.0.0.1:6379/0", cfg)      # cfg.tables: the list of table specs
    client.create_tables()
    keys = client.insert("online", transitions, priorities=None)
    info, batch = client.sample(256, beta=0.4)                  # each table gives its share of the batch
    info, batch = client.sample(256, {"expert": 0.2, "online": 0.8})   # or the shares given here,
    info, batch = client.sample(256, 0.2)                       # or the teacher tables' share alone
    client.update_priorities(info.table[i], info.key[i], new_priorities)   # per table

The client holds no replay state: every item, priority, aggregate, cursor and counter is
in Redis. Priorities, aggregates, cursors and counters change only inside server-side Lua
scripts; payloads never pass through Lua: an insert reserves keys (script), stores the
payloads under keys named after the items (MSET) and publishes them (script), and a
sample draws keys (script) then reads their payloads (MGET); see replay_service.table.
So any number of writers and readers may run at once, a sampler never sees an item
before its payload is stored, and a restarted process or server continues where it was.

A stored item that does not decode is quarantined when it is drawn (priority 0, bytes
kept in Redis, ``stats()[table]["decode_errors"]``, :meth:`ReplayClient.quarantined`) and
replaced by another draw, with one warning per table, so a bad item cannot stall a learner.

It pickles to ``(url, cfg)`` and connects lazily, so it can be handed to Ray actors.
"""
from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis

from common.config import ReplayConfig
from common.replay_tables import TableSpec, apportion, batch_shares
from common.transition import Transition
from replay_service.codec import CodecError, decode_many, encode_many
from replay_service.errors import (
    InsertStopped,
    RateLimiterTimeout,
    ReplayConfigError,
    ReplayConnectionError,
    ReplayError,
)
from replay_service.table import LAYOUT_VERSION, SCRIPTS, TableKeys, block_size, create_args

_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, OSError)
_BIG = 4096  # arguments longer than this are sent as their own buffer, uncopied
# transitions per encode call and per MSET command of an insert: pieces of ~0.6 MB (64-atom
# transitions) cost the client half the CPU of one 2.4 MB buffer per batch of 256 (fewer page
# faults on fresh large buffers) and let Redis parse one piece while the next is sent
_PIECE = 64
_MAX_REFILLS = 8  # rounds of replacement draws for items that do not decode, before sample gives up
log = logging.getLogger(__name__)


REDIS_PASSWORD_ENV = "RELAXRL_REDIS_PASSWORD"
"""Environment variable holding the Redis password (compose's ``REDIS_PASSWORD`` in ``.env``)."""
PASSWORD_ADVICE = (f"give the password through the {REDIS_PASSWORD_ENV} environment variable or --redis-password-file "
                   "FILE (replay.password_file), not in the URL (every user of the machine sees a command line in ps)")
"""What every Redis password problem advises (the README's way; a password in a URL is warned about)."""


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by '***'."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _as_bytes(a: Any) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, (int, np.integer)):
        return b"%d" % int(a)
    if isinstance(a, (float, np.floating)):
        return repr(float(a)).encode()
    raise TypeError(f"cannot send {type(a).__name__} to Redis")


def _frame(args: Sequence[Any]) -> list[bytes]:
    """RESP framing of one command; long arguments stay separate buffers (no copy)."""
    out: list[bytes] = []
    head = [b"*%d\r\n" % len(args)]
    for a in args:
        b = _as_bytes(a)
        if len(b) > _BIG:
            head.append(b"$%d\r\n" % len(b))
            out.append(b"".join(head))
            out.append(b)
            head = [b"\r\n"]
        else:
            head.append(b"$%d\r\n%s\r\n" % (len(b), b))
    out.append(b"".join(head))
    return out


@dataclass
class SampleInfo:
    """Per-item facts of a sampled batch (arrays of length batch_size)."""

    table: np.ndarray  # [B] str: the table of each item (the tables in list order, each one's items together)
    key: np.ndarray  # [B] int64: item key, for update_priorities
    probability: np.ndarray  # [B] float64: P(i) = p_i^α / Σ_j p_j^α within its table
    table_size: np.ndarray  # [B] int64: N, items in the table when sampled
    weight: np.ndarray  # [B] float64: (N·P(i))^-β / max_j (N·P(j))^-β over the item's whole table


def _checked_priorities(table: str, priorities: Iterable[float] | None, n: int) -> np.ndarray | None:
    """The priorities of an insert of ``n`` items as float64 [n] (None: the table's maximum for each); ReplayError
    unless there is one finite priority >= 0 per item."""
    if priorities is None:
        return None
    pr = np.asarray(list(priorities) if not isinstance(priorities, np.ndarray) else priorities, dtype=np.float64)
    if pr.shape != (n,):
        raise ReplayError(f"insert into '{table}': {n} transitions but priorities of shape {pr.shape}")
    if not (np.isfinite(pr).all() and (pr >= 0).all()):
        raise ReplayError(f"insert into '{table}': priorities must be finite and >= 0")
    return pr


class ReplayClient:
    """Client of the Redis-backed tables of ``cfg.tables`` (see module docstring)."""

    def __init__(self, url: str = "", cfg: ReplayConfig | None = None, seed: int | None = None):
        self.cfg = cfg or ReplayConfig()
        self.url = url or self.cfg.url
        if not self.url:
            raise ReplayConfigError("no Redis URL given: pass one (redis://host:port/db, unix:///path.sock) or start "
                                    "an embedded server with replay_service.server.start_embedded(data_dir)")
        self.safe_url = redact_url(self.url)
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._pool: redis.ConnectionPool | None = None
        self._sha: dict[str, str] = {}
        self._token_base = uuid.uuid4().hex
        self._n_tokens = 0
        self._warned: set[str] = set()  # tables whose decode errors were already logged
        self.specs: dict[str, TableSpec] = {t.name: t for t in self.cfg.tables}
        self.keys = {name: TableKeys.of(self.cfg.namespace, name) for name in self.specs}

    # ------------------------------------------------------------------ plumbing

    def __reduce__(self):
        return (ReplayClient, (self.url, self.cfg, self._seed))

    def __repr__(self) -> str:
        return f"ReplayClient({self.safe_url!r}, namespace={self.cfg.namespace!r})"

    def _get_pool(self) -> redis.ConnectionPool:
        if self._pool is None or self._pool.pid != os.getpid():
            try:
                self._pool = redis.ConnectionPool.from_url(
                    self.url, socket_connect_timeout=min(5.0, max(0.5, self.cfg.connect_timeout)),
                    socket_timeout=120.0, health_check_interval=0)
            except ValueError as e:
                raise ReplayConfigError(f"invalid Redis URL {self.safe_url}: {e}") from None
            self._sha = {}
        return self._pool

    def _raw(self, cmds: Sequence[Sequence[Any]], transform: Callable[[Any], Any] | None = None) -> list[Any]:
        """Send ``cmds`` pipelined on one connection; their replies, an error reply as its exception object.

        ``transform`` is applied to each other reply as soon as it is read, while Redis works on the next.
        """
        pool = self._get_pool()
        conn = pool.get_connection()
        try:
            for args in cmds:  # one buffer per command: Redis parses one while the next is on its way
                conn.send_packed_command([b"".join(_frame(args))], check_health=False)
            out: list[Any] = []
            for _ in cmds:
                try:
                    r = conn.read_response()
                except redis.exceptions.ResponseError as e:
                    out.append(e)
                else:
                    out.append(r if transform is None else transform(r))
            return out
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _call(self, *args: Any) -> Any:
        """One command, retried with exponential backoff while Redis is unreachable or loading."""
        return self._pipeline([args])[0]

    def _pipeline(self, cmds: Sequence[Sequence[Any]], transform: Callable[[Any], Any] | None = None) -> list[Any]:
        """Idempotent commands sent together (one round trip), all resent while Redis is unreachable or
        loading; the first error reply is raised (as a clear error where it is one of ours) after all are read.
        ``transform`` (pure) is applied to each reply as it arrives (see :meth:`_raw`)."""
        deadline: float | None = None
        delay = 0.02
        while True:
            try:
                out = self._raw(cmds, transform)
                for r in out:
                    if isinstance(r, redis.exceptions.ResponseError):
                        raise r
                return out
            except redis.exceptions.AuthenticationError as e:
                what = "refused the password" if urlsplit(self.url).password else "requires a password (none in the URL)"
                raise ReplayConnectionError(f"Redis at {self.safe_url} {what}: {e}; {PASSWORD_ADVICE}") from None
            except redis.exceptions.BusyLoadingError as e:
                err: Exception = e
            except _RETRYABLE as e:
                err = e
            except redis.exceptions.ResponseError as e:
                msg = str(e)
                if "NOAUTH" in msg or "WRONGPASS" in msg:
                    raise ReplayConnectionError(f"Redis at {self.safe_url} needs a (correct) password: {msg}; "
                                                f"{PASSWORD_ADVICE}") from None
                if "RELAXRL_NO_TABLE" in msg:
                    raise ReplayError(f"replay tables in namespace '{self.cfg.namespace}' do not exist at "
                                      f"{self.safe_url}: call create_tables() (or run `relaxrl replay serve`)") from None
                if "RELAXRL_ZERO_PRIORITY" in msg:
                    raise ReplayError(f"cannot sample table '{msg.split()[-1]}': every priority is 0; "
                                      "priorities must be |δ| + ε with ε > 0") from None
                raise
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.cfg.connect_timeout
            if now >= deadline:
                raise ReplayConnectionError(
                    f"cannot reach Redis at {self.safe_url} (retried {self.cfg.connect_timeout:g} s): "
                    f"{type(err).__name__}: {err}. Is the server running (relaxrl replay serve), and is the URL right?"
                ) from None
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, 1.0)

    def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The EVALSHA command of script ``name`` (loading the script into Redis first if needed)."""
        sha = self._sha.get(name)
        if sha is None:
            sha = self._call("SCRIPT", "LOAD", SCRIPTS[name])
            sha = sha.decode() if isinstance(sha, bytes) else sha
            self._sha[name] = sha
        return ["EVALSHA", sha, len(keys), *keys, *args]

    def _script(self, name: str, keys: Sequence[str], args: Sequence[Any], before: Sequence[Sequence[Any]] = ()) -> Any:
        """Run script ``name``; the commands ``before`` (idempotent) are pipelined ahead of it."""
        while True:
            try:
                return self._pipeline([*before, self._evalsha(name, keys, args)])[-1]
            except redis.exceptions.NoScriptError:  # server restarted: script cache is empty
                self._sha.pop(name, None)

    # ------------------------------------------------------------------ tables

    def create_tables(self, batch_size: int | None = None) -> dict[str, str]:
        """Create every table of the list if absent, or check that the existing ones match the config (idempotent;
        a table's rate limiter is set anew). Tables in Redis that the list does not name are left alone.

        With ``batch_size`` the learner's batch is checked against the rate limiter too.
        Returns {table: 'created' | 'exists'}.
        """
        out = {}
        for name, spec in self.specs.items():
            if batch_size is not None:
                spec.rate_limiter.check_batch(name, batch_size)
            k = self.keys[name]
            status, layout, cap, alpha, block = (x.decode() for x in self._script("create", [k.meta, k.leaf, k.agg],
                                                                                   create_args(spec)))
            want = (LAYOUT_VERSION, spec.max_size, float(spec.priority_exponent), block_size(spec.max_size))
            if (int(layout), int(cap), float(alpha), int(block)) != want:
                raise ReplayConfigError(
                    f"replay table '{name}' in namespace '{self.cfg.namespace}' at {self.safe_url} was built with "
                    f"layout {layout}, max_size {cap}, priority_exponent {alpha}; the config asks layout "
                    f"{LAYOUT_VERSION}, max_size {spec.max_size}, priority_exponent {spec.priority_exponent}. Use "
                    "another replay.namespace, or delete the old tables to start afresh")
            out[name] = status
        return out

    def _spec(self, table: str) -> TableSpec:
        if table not in self.specs:
            raise ReplayError(f"unknown replay table {table!r}; the tables are {', '.join(self.specs)}")
        return self.specs[table]

    # ------------------------------------------------------------------ insert

    def insert(self, table: str, transitions: Sequence[Transition], priorities: Iterable[float] | None = None,
               timeout: float | None = 60.0, stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Append transitions to ``table`` (FIFO); returns their keys [n] int64.

        ``priorities=None`` gives each item the table's current maximum priority (1.0 when empty).
        Blocks while the rate limiter refuses inserts, up to ``timeout`` seconds (None = forever), or
        until ``stop()`` is true (a writer that is shutting down): then :class:`InsertStopped`, the
        items not yet granted are not stored.
        """
        self._spec(table)
        # all encoded (and so validated) before any slot is reserved; in pieces, whose buffers stay small
        payloads = [p for i in range(0, len(transitions), _PIECE) for p in encode_many(transitions[i:i + _PIECE])]
        n = len(payloads)
        pr = _checked_priorities(table, priorities, n)
        k = self.keys[table]
        keys = np.empty(n, dtype=np.int64)
        done, waited = 0, False
        start = time.monotonic()
        delay = 0.001
        while done < n:
            m = min(n - done, max(1, self.cfg.insert_chunk))
            granted, first = self._script("reserve", [k.meta, k.leaf, k.agg, self._token(k.token_prefix)],
                                          [m, k.item_prefix])
            granted, first = int(granted), int(first)
            if granted:
                self._commit(table, first, payloads[done:done + granted], None if pr is None else pr[done:done + granted])
                keys[done:done + granted] = np.arange(first, first + granted)
                done += granted
                delay = 0.001
                continue
            self._refused(table, keys[:done], n, waited, start, timeout, stop)
            waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return keys

    def _commit(self, table: str, first: int, payloads: list[bytes], priorities: np.ndarray | None) -> None:
        """Store the payloads of one reservation (keys ``first`` .., ours at priority 0) and publish them."""
        k = self.keys[table]
        granted = len(payloads)
        skip = max(0, granted - self.specs[table].max_size)  # overwritten within this same reservation
        msets = []
        for lo in range(skip, granted, _PIECE):
            mset: list[Any] = ["MSET"]
            for j in range(lo, min(granted, lo + _PIECE)):
                mset += (k.item(first + j), payloads[j])
            msets.append(mset)
        packed = b"" if priorities is None else priorities.astype("<f8").tobytes()
        self._script("commit", [k.meta, k.leaf, k.agg], [first, granted, packed, k.item_prefix], before=msets)

    def _refused(self, table: str, inserted: np.ndarray, n: int, waited: bool, start: float,
                 timeout: float | None, stop: Callable[[], bool] | None) -> None:
        """The rate limiter granted nothing: raise :class:`InsertStopped` when ``stop()`` says so, count the insert's
        first wait in the table's ``insert_waits``, raise :class:`RateLimiterTimeout` ``timeout`` s after ``start`` (each error
        carries the keys of the items already inserted); else return, to wait and ask again."""
        if stop is not None and stop():
            stopped = InsertStopped(f"insert into '{table}' stopped with {len(inserted)} of {n} items inserted: "
                                    "the writer is stopping")
            stopped.inserted_keys = inserted.copy()  # type: ignore[attr-defined]
            raise stopped
        if not waited:
            self._call("HINCRBY", self.keys[table].meta, "insert_waits", 1)
        if timeout is not None and time.monotonic() - start > timeout:
            err = RateLimiterTimeout(
                f"insert into '{table}' waited {timeout:g} s for the rate limiter ({self.specs[table].rate_limiter}) "
                f"with {len(inserted)} of {n} items inserted: is the learner sampling?")
            err.inserted_keys = inserted.copy()  # type: ignore[attr-defined]
            raise err

    def _token(self, prefix: str) -> str:
        """A key name unique to this reservation (random per client, pid, counter): a retried call reuses it."""
        self._n_tokens += 1
        return f"{prefix}{self._token_base}:{os.getpid()}:{self._n_tokens}"

    # ------------------------------------------------------------------ sample

    def sample(self, batch_size: int, shares: Mapping[str, float] | float | None = None, beta: float = 0.4,
               timeout: float | None = 30.0) -> tuple[SampleInfo, list[Transition]]:
        """A prioritized batch with each table's share: ``shares`` by table name, or a number, the teacher tables'
        combined share (the learner's expert fraction; the others split the rest by their spec shares), or None,
        the specs' ``share``.

        The batch is split by largest remainder; a table without a rate limiter gives at most what it holds and
        the rate-limited tables give the rest (``common.replay_tables``). Blocks while a rate limiter refuses,
        up to ``timeout`` seconds, then raises :class:`RateLimiterTimeout` saying which table and why.
        """
        B = int(batch_size)
        if B < 1:
            raise ReplayError(f"batch_size must be >= 1, got {batch_size}")
        if shares is None or isinstance(shares, (int, float)):
            if shares is not None and not 0.0 <= shares <= 1.0:
                raise ReplayError(f"sample: the teacher tables' share must be in [0, 1], got {shares}")
            shares = batch_shares(list(self.specs.values()), None if shares is None else float(shares))
        given = dict(shares)
        unknown = sorted(set(given) - set(self.specs))
        if unknown:
            raise ReplayError(f"sample: unknown table(s) {', '.join(unknown)}; the tables are {', '.join(self.specs)}")
        weights = [float(given.get(name, 0.0)) for name in self.specs]
        if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
            raise ReplayError(f"sample: shares must be finite, >= 0 and not all 0, got {given}")
        for name, spec in self.specs.items():
            spec.rate_limiter.check_batch(name, B)
        parts = self._draw(apportion(B, weights), weights, beta, timeout, refill=False)
        got: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[Transition]]]] = {
            name: [] for name in self.specs}
        for _ in range(_MAX_REFILLS + 1):
            item_keys = [self.keys[name].item(kk) for name, key, *_ in parts for kk in key.tolist()]
            # payloads in pieces: each is decoded while Redis serves the next
            pieces = [["MGET", *item_keys[i:i + _PIECE]] for i in range(0, len(item_keys), _PIECE)]
            decoded = [t for piece in self._pipeline(pieces, decode_many) for t in piece]
            missing: dict[str, int] = {}
            pos = 0
            for name, key, p, size, w in parts:
                items = decoded[pos:pos + key.size]
                pos += key.size
                ok = np.array([isinstance(t, Transition) for t in items], dtype=bool)
                got[name].append((key[ok], p[ok], size[ok], w[ok], [t for t in items if isinstance(t, Transition)]))
                if not ok.all():
                    bad = {int(kk): t for kk, t, good in zip(key.tolist(), items, ok) if not good}
                    self._quarantine(name, bad)
                    missing[name] = missing.get(name, 0) + int((~ok).sum())
            if not missing:
                break
            # replacements for the items that did not decode or were evicted since the draw, from the same table
            parts = []
            for name, m in missing.items():
                only = [m if other == name else 0 for other in self.specs]
                parts += self._draw(only, weights, beta, timeout, refill=True)
        else:
            raise ReplayError(f"sample of {B}: after {_MAX_REFILLS} rounds of replacements some items still do not "
                              "decode; see stats()[table]['decode_errors'] and quarantined(table)")
        chunks = [(name, c) for name in self.specs for c in got[name]]
        info = SampleInfo(np.concatenate([np.full(c[0].size, name) for name, c in chunks]),
                          *(np.concatenate([c[j] for _, c in chunks]) for j in range(4)))
        return info, [t for _, c in chunks for t in c[4]]

    def _draw(self, counts: Sequence[int], shares: Sequence[float], beta: float, timeout: float | None, refill: bool
              ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Run the sample script for ``counts`` items per table (list order; waiting for the rate limiters unless
        ``refill``); per table drawn from: (name, keys [m] int64, probabilities [m], table sizes [m], importance
        weights [m])."""
        names = list(self.specs)
        n = int(sum(counts))
        keys_ = [key for name in names for key in (self.keys[name].meta, self.keys[name].leaf, self.keys[name].agg)]
        start = time.monotonic()
        waited = False
        delay = 0.001
        while True:
            us = self._rng.random(n).astype("<f8").tobytes()
            res = self._script("sample", keys_, [n, "1" if refill else "0", us, *names, *map(int, counts),
                                                 *(repr(float(x)) for x in shares)])
            if int(res[0]) == 1:
                break
            reason = res[1].decode()
            if refill:
                raise ReplayError(f"cannot draw replacements for undecodable items: {reason}")
            if not waited:
                waited = True
                blocked = reason.split()[0]
                if blocked in self.keys:
                    self._call("HINCRBY", self.keys[blocked].meta, "sample_waits", 1)
            if timeout is not None and time.monotonic() - start > timeout:
                raise RateLimiterTimeout(f"sample of {n} waited {timeout:g} s: {reason}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        out = []
        for name, part in zip(names, res[1:]):
            m = int(part[0])
            if m == 0:
                continue
            size = int(part[1])
            total, wmin = np.frombuffer(part[4], "<f8")
            key = np.frombuffer(part[5], "<f8").astype(np.int64)
            w = np.frombuffer(part[6], "<f8")
            # (N·P_i)^-β / max_j (N·P_j)^-β = (w_i / w_min)^-β
            out.append((name, key, w / total, np.full(m, size, dtype=np.int64), (w / wmin) ** (-beta)))
        return out

    def _quarantine(self, table: str, bad: dict[int, Transition | CodecError | None]) -> None:
        """Take items that did not decode out of sampling (priority 0, bytes kept in the quarantine hash).

        ``bad`` maps key -> its CodecError, or None for a payload that was missing (normally an
        item evicted since it was drawn, which the script leaves alone).
        """
        k = self.keys[table]
        keys = sorted(bad)
        added = int(self._script("quarantine", [k.meta, k.leaf, k.agg, k.quarantine],
                                 [k.item_prefix, len(keys), *keys]))
        if added and table not in self._warned:
            self._warned.add(table)
            key, err = next(((kk, e) for kk, e in bad.items() if e is not None), (keys[0], None))
            log.warning("replay table '%s': item %d %s; it is quarantined (priority 0, stored bytes kept in the Redis "
                        "hash %s) and a replacement was drawn. Later decode errors are only counted: "
                        "stats()['%s']['decode_errors'], quarantined('%s')", table, key,
                        f"does not decode ({err})" if err is not None else "has no stored payload",
                        k.quarantine, table, table)

    # ------------------------------------------------------------------ priorities

    def update_priorities(self, table: str, keys: Iterable[int], priorities: Iterable[float]) -> int:
        """Set new priorities (|δ| + ε) in one call; keys overwritten since they were sampled are ignored.

        Returns the number of priorities applied.
        """
        self._spec(table)
        kk = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys), dtype=np.int64).ravel()
        pr = np.asarray(priorities if isinstance(priorities, np.ndarray) else list(priorities), dtype=np.float64).ravel()
        if kk.shape != pr.shape:
            raise ReplayError(f"update_priorities('{table}'): {kk.size} keys but {pr.size} priorities")
        if not (np.isfinite(pr).all() and (pr >= 0).all()):
            raise ReplayError(f"update_priorities('{table}'): priorities must be finite and >= 0")
        if kk.size == 0:
            return 0
        k = self.keys[table]
        return int(self._script("update", [k.meta, k.leaf, k.agg],
                                [kk.size, kk.astype("<f8").tobytes(), pr.astype("<f8").tobytes()]))

    # ------------------------------------------------------------------ introspection

    def _meta(self, table: str) -> dict[str, float]:
        raw = self._call("HGETALL", self.keys[table].meta)
        if not raw:
            raise ReplayError(f"replay table '{table}' does not exist in namespace '{self.cfg.namespace}' at "
                              f"{self.safe_url}: call create_tables()")
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2])
        return {(a.decode() if isinstance(a, bytes) else a): float(b) for a, b in pairs}

    def sizes(self) -> dict[str, int]:
        """Items held per table."""
        out = {}
        for name in self.specs:
            m = self._meta(name)
            out[name] = int(min(m["cursor"], m["capacity"]))
        return out

    def priorities(self, table: str) -> tuple[np.ndarray, np.ndarray]:
        """(keys [N] int64, priorities [N] float64) of every live item of ``table``, oldest first."""
        m = self._meta(table)
        cap, cursor = int(m["capacity"]), int(m["cursor"])
        size = min(cap, cursor)
        leaf = np.frombuffer(self._call("GETRANGE", self.keys[table].leaf, 0, 16 * size - 1) if size else b"", "<f8")
        keys = np.arange(cursor - size, cursor, dtype=np.int64)
        return keys, leaf[1::2][keys % cap]

    def items(self, table: str, keys: Iterable[int]) -> list[Transition | None]:
        """The stored transitions of ``keys``: None for keys no longer (or not yet) in the table, and for
        quarantined ones; a stored item that does not decode raises :class:`CodecError` naming it."""
        kk = np.asarray(keys if isinstance(keys, np.ndarray) else list(keys), dtype=np.int64).ravel()
        if kk.size == 0:
            return []
        self._spec(table)
        k = self.keys[table]
        raw = self._call("MGET", *[k.item(x) for x in kk.tolist()])
        out: list[Transition | None] = []
        for key, r in zip(kk.tolist(), decode_many(raw)):
            if isinstance(r, CodecError):
                raise CodecError(f"table '{table}' key {key}: {r}")
            out.append(r)
        return out

    def quarantined(self, table: str) -> list[int]:
        """Keys of the items of ``table`` that failed to decode when sampled, in increasing order; their
        stored bytes are kept in Redis (:meth:`quarantined_bytes`)."""
        self._spec(table)
        return sorted(int(x) for x in self._call("HKEYS", self.keys[table].quarantine))

    def quarantined_bytes(self, table: str, key: int) -> bytes | None:
        """The bytes stored for quarantined item ``key`` of ``table`` (b"" when none were stored; None if not quarantined)."""
        self._spec(table)
        return self._call("HGET", self.keys[table].quarantine, int(key))

    def item_key(self, table: str, key: int) -> str:
        """Name of the Redis string holding the payload of item ``key`` (for inspection and fault-injection tests)."""
        self._spec(table)
        return self.keys[table].item(key)

    def stats(self) -> dict[str, dict[str, float]]:
        """Counters and priority summary per table: size, capacity, inserts, samples, updates,
        stale_updates, insert_waits, sample_waits, decode_errors (items quarantined), and
        priority_min / _mean / _max over the items that can be sampled (priority > 0)."""
        out: dict[str, dict[str, float]] = {}
        for name in self.specs:
            m = self._meta(name)
            _, p = self.priorities(name)
            p = p[p > 0]
            size = int(min(m["cursor"], m["capacity"]))
            out[name] = {
                "size": size, "capacity": int(m["capacity"]), "inserts": int(m["cursor"]),
                "samples": int(m["samples"]), "updates": int(m["updates"]), "stale_updates": int(m["stale_updates"]),
                "insert_waits": int(m["insert_waits"]), "sample_waits": int(m["sample_waits"]),
                "decode_errors": int(m.get("decode_errors", 0)),
                "priority_min": float(p.min()) if p.size else 0.0, "priority_mean": float(p.mean()) if p.size else 0.0,
                "priority_max": float(p.max()) if p.size else 0.0,
            }
        return out

    def ping(self) -> None:
        """Raise :class:`ReplayConnectionError` unless Redis answers (after the usual retries)."""
        self._call("PING")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()
            self._pool = None
