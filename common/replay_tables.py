"""Replay tables as a list of specs, after Reverb's ``Table(name, max_size, sampler, remover, rate_limiter)``.

    TableSpec("online", max_size=5000, share=0.75, source="policy", rate_limiter=MinSize(64))

Every table samples in proportion to priority^α (α = ``priority_exponent``) and removes the
oldest item first; a spec adds the table's share of each learner batch, which actor steps go
into it (``source``) and its rate limiter. The rate limiters are Reverb's (``MinSize``,
``SampleToInsertRatio``) plus ``NoLimit``, a table that never makes the learner wait.
Constructors reject settings that would deadlock and say why (:class:`ConfigError`).

``replay.tables`` in a config is a list of these (TOML ``[[replay.tables]]``); :data:`DEFAULT_TABLES`
is today's pair. :func:`read_replay_values` reads that list, the keys of the two-table form
(``replay.expert_max_size`` ...) and ``--set replay.tables.NAME.FIELD=value`` edits.

How a batch is composed (:func:`batch_shares`, :func:`apportion`, and the replay service's
SAMPLE script): each table gives its share of the batch, rounded by largest remainder. A table
with ``NoLimit`` gives at most what it holds (nothing while empty); the tables with a rate limiter
give the rest, in the ratio of their shares. The learner's expert-fraction schedule
(``learner.expert_fraction_*``) sets the combined share of the ``teacher`` tables at each update,
in place of their spec shares; the other tables split the rest in the ratio of their spec shares.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.errors import ConfigError
from common.names import POLICY, SOURCES, TABLE_NAMES, TEACHER

_DBL_MAX = 1.7976931348623157e308  # Reverb's MinSize bounds: the ratio never binds


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- rate limiters

@dataclass(frozen=True)
class RateLimiter:
    """When a table may be sampled and inserted into (Reverb's ``RateLimiter``).

    Sampling waits until the table holds ``min_size_to_sample`` items and while
    ``inserts·samples_per_insert − samples`` would fall below ``min_diff``; inserting waits while it would
    rise above ``max_diff`` (once the table holds more than ``min_size_to_sample``)."""

    kind: ClassVar[str] = ""

    @property
    def blocks(self) -> bool:
        """Whether the table can make the sampler wait (False: it gives what it holds)."""
        return True

    @property
    def bounds(self) -> tuple[int, float, float, float]:
        """(min_size_to_sample, samples_per_insert, min_diff, max_diff), Reverb's representation."""
        raise NotImplementedError

    def check(self, table: str, max_size: int) -> None:
        """Reject a limiter that the table could never satisfy."""
        min_size = self.bounds[0]
        if min_size > max_size:
            raise ConfigError(f"replay table '{table}': min_size_to_sample={min_size} > max_size={max_size}: the table "
                              "can never hold enough items, so sampling would block forever; lower min_size_to_sample "
                              "or raise max_size")

    def check_batch(self, table: str, batch_size: int) -> None:
        """Reject a batch size that the limiter could never grant in one piece."""

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., field: value}``, what :func:`rate_limiter_from_dict` reads back."""
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass(frozen=True)
class NoLimit(RateLimiter):
    """No rate limiter: the table never makes the learner wait. It gives up to its share of a batch from what it
    holds (nothing while empty) and the rate-limited tables give the rest; inserts are never held back."""

    kind: ClassVar[str] = "none"

    @property
    def blocks(self) -> bool:
        return False

    @property
    def bounds(self) -> tuple[int, float, float, float]:
        return 0, 0.0, 0.0, 0.0


@dataclass(frozen=True)
class MinSize(RateLimiter):
    """Sampling waits until the table holds ``min_size_to_sample`` items; inserts never wait (Reverb's ``MinSize``)."""

    min_size_to_sample: int
    kind: ClassVar[str] = "min_size"

    def __post_init__(self) -> None:
        if not _is_int(self.min_size_to_sample) or self.min_size_to_sample < 1:
            raise ConfigError(f"MinSize: min_size_to_sample={self.min_size_to_sample!r}; it must be an integer >= 1 "
                              "(an empty table cannot be sampled)")

    @property
    def bounds(self) -> tuple[int, float, float, float]:
        return self.min_size_to_sample, 1.0, -_DBL_MAX, _DBL_MAX


@dataclass(frozen=True)
class SampleToInsertRatio(RateLimiter):
    """Each inserted item is sampled about ``samples_per_insert`` times: the sampler waits when it runs more than
    ``error_buffer`` samples ahead of that ratio, writers wait when they run as far behind
    (Reverb's ``SampleToInsertRatio``), after ``min_size_to_sample`` items."""

    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: float
    kind: ClassVar[str] = "sample_to_insert_ratio"

    def __post_init__(self) -> None:
        spi, eb, n = self.samples_per_insert, self.error_buffer, self.min_size_to_sample
        if not (_is_number(spi) and math.isfinite(spi) and spi > 0):
            raise ConfigError(f"SampleToInsertRatio: samples_per_insert={spi!r}; it must be a positive number "
                              "(for no ratio use MinSize, kind = 'min_size')")
        if not _is_int(n) or n < 1:
            raise ConfigError(f"SampleToInsertRatio: min_size_to_sample={n!r}; it must be an integer >= 1")
        if not (_is_number(eb) and math.isfinite(eb)) or eb < max(1.0, spi):
            raise ConfigError(
                f"SampleToInsertRatio: samples_per_insert={spi} with error_buffer={eb} would deadlock: writers wait "
                "for samples and the sampler waits for inserts with nothing between them; error_buffer must be at "
                f"least max(1, samples_per_insert) = {max(1.0, spi):g} (Reverb's rule), and at least "
                "(batch_size + samples_per_insert)/2 for batched sampling")

    @property
    def bounds(self) -> tuple[int, float, float, float]:
        offset = self.samples_per_insert * self.min_size_to_sample
        return self.min_size_to_sample, float(self.samples_per_insert), offset - self.error_buffer, offset + self.error_buffer

    def check_batch(self, table: str, batch_size: int) -> None:
        if 2 * self.error_buffer < batch_size + self.samples_per_insert:
            need = (batch_size + self.samples_per_insert) / 2
            raise ConfigError(
                f"replay table '{table}': a batch of {batch_size} can never be granted with samples_per_insert="
                f"{self.samples_per_insert:g}, error_buffer={self.error_buffer:g} (writers would block before the "
                f"sampler may take a whole batch); set the rate limiter's error_buffer >= {need:g}")


RATE_LIMITERS: dict[str, type[RateLimiter]] = {c.kind: c for c in (NoLimit, MinSize, SampleToInsertRatio)}
"""Rate limiters by the ``kind`` a config names them with."""


def rate_limiter_from_dict(value: Any) -> RateLimiter:
    """A rate limiter from ``{kind = "...", field = value}`` (or the object itself)."""
    if isinstance(value, RateLimiter):
        return value
    kinds = ", ".join(f"{k!r} ({', '.join(f.name for f in dataclasses.fields(c)) or 'no fields'})"
                      for k, c in RATE_LIMITERS.items())
    if not isinstance(value, Mapping) or value.get("kind") not in RATE_LIMITERS:
        raise ConfigError(f"rate_limiter must be a table with a kind, one of {kinds}; got {value!r}. "
                          f'E.g. rate_limiter = {{ kind = "min_size", min_size_to_sample = 64 }}')
    cls = RATE_LIMITERS[value["kind"]]
    args = {k: v for k, v in value.items() if k != "kind"}
    names = {f.name for f in dataclasses.fields(cls)}
    if set(args) != names:
        raise ConfigError(f"rate_limiter of kind {value['kind']!r} takes exactly {sorted(names) or 'no fields'}, "
                          f"got {sorted(args)}")
    return cls(**args)


# ----------------------------------------------------------------------------- the table spec

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class TableSpec:
    """One replay table (Reverb's ``Table``: name, max_size, a prioritized sampler, FIFO removal, rate limiter)."""

    name: str
    """Name of the table (letters, digits, '_' and '-'): its Redis keys, its metric label."""
    max_size: int
    """Capacity; the oldest item is removed first (FIFO). Small tables keep the data fresh (1k–5k, DESIGN-NOTES)."""
    share: float
    """Share of each learner batch drawn from this table, in [0, 1]; the shares of all tables sum to 1. The teacher
    tables' combined share follows learner.expert_fraction_* instead (the module docstring says how)."""
    priority_exponent: float = 0.6
    """α of proportional prioritized sampling: P(i) = p_i^α / Σ_j p_j^α (0 = uniform)."""
    source: str = POLICY
    """Which actor steps go in: 'teacher' (expert actors' teacher steps, with a_expert; behaviour cloning reads them)
    or 'policy' (every policy move). Several tables may share a source: each gets every such step."""
    rate_limiter: RateLimiter = field(default_factory=lambda: MinSize(64))
    """{kind = 'none'}, {kind = 'min_size', min_size_to_sample = N} or {kind = 'sample_to_insert_ratio',
    samples_per_insert = R, min_size_to_sample = N, error_buffer = E}."""

    def __post_init__(self) -> None:
        where = f"replay table {self.name!r}"
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: a name is 1-64 letters, digits, '_' or '-' (it becomes part of Redis keys)")
        if not _is_int(self.max_size) or self.max_size < 1:
            raise ConfigError(f"{where}: max_size={self.max_size!r}; it must be an integer >= 1")
        if not (_is_number(self.priority_exponent) and math.isfinite(self.priority_exponent) and self.priority_exponent >= 0):
            raise ConfigError(f"{where}: priority_exponent={self.priority_exponent!r}; it must be finite and >= 0, e.g. 0.6")
        if not (_is_number(self.share) and 0.0 <= self.share <= 1.0):
            raise ConfigError(f"{where}: share={self.share!r}; it must be in [0, 1]")
        if self.source not in SOURCES:
            raise ConfigError(f"{where}: source={self.source!r}; it must be one of {', '.join(map(repr, SOURCES))}")
        if not isinstance(self.rate_limiter, RateLimiter):
            raise ConfigError(f"{where}: rate_limiter={self.rate_limiter!r} is not a rate limiter")
        self.rate_limiter.check(self.name, self.max_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the rate limiter as its dict), what :func:`table_from_dict` reads back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["rate_limiter"] = self.rate_limiter.to_dict()
        return out


def default_tables(expert_max_size: int = 2000, online_max_size: int = 5000, priority_exponent: float = 0.6,
                   online_limiter: RateLimiter = MinSize(64), expert_limiter: RateLimiter = NoLimit()
                   ) -> tuple[TableSpec, TableSpec]:
    """The default pair with these settings: ``expert`` (teacher steps, share 0.25) and ``online`` (policy steps,
    share 0.75)."""
    return (TableSpec(TABLE_NAMES[0], expert_max_size, 0.25, priority_exponent, TEACHER, expert_limiter),
            TableSpec(TABLE_NAMES[1], online_max_size, 0.75, priority_exponent, POLICY, online_limiter))


DEFAULT_TABLES = default_tables()
"""``expert`` (2000 teacher steps, never waited for) and ``online`` (5000 policy steps, sampled from 64 items on)."""

TABLE_FIELDS = tuple(f.name for f in dataclasses.fields(TableSpec))


def table_from_dict(value: Any, where: str) -> TableSpec:
    """A spec from a TOML table (or the spec itself); ``where`` names it in errors (``replay.tables[1]``)."""
    if isinstance(value, TableSpec):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table of {', '.join(TABLE_FIELDS)}; got {value!r}")
    unknown = sorted(set(value) - set(TABLE_FIELDS))
    missing = [f.name for f in dataclasses.fields(TableSpec)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in value]
    if unknown or missing:
        raise ConfigError(f"{where}: " + (f"unknown key(s) {', '.join(unknown)}" if unknown else
                                          f"missing {', '.join(missing)}") + f"; a table has {', '.join(TABLE_FIELDS)}")
    args = dict(value)
    for key in ("share", "priority_exponent"):  # TOML writes 1 for 1.0
        if key in args and _is_int(args[key]):
            args[key] = float(args[key])
    if "rate_limiter" in args:
        try:
            args["rate_limiter"] = rate_limiter_from_dict(args["rate_limiter"])
        except ConfigError as e:
            raise ConfigError(f"{where} ({args.get('name')!r}): {e}") from None
    return TableSpec(**args)


def check_tables(tables: Sequence[TableSpec]) -> None:
    """The rules of a table list: names unique, shares summing to 1, a table that can fill a batch, one for policy steps."""
    names = [t.name for t in tables]
    if not tables:
        raise ConfigError("replay.tables is empty; give at least one table (the defaults are 'expert' and 'online')")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"replay.tables names {', '.join(map(repr, dup))} more than once; table names are unique")
    total = sum(t.share for t in tables)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"replay.tables: the shares sum to {total:g} ({', '.join(f'{t.name} {t.share:g}' for t in tables)}); "
                          "they must sum to 1")
    if not any(t.rate_limiter.blocks for t in tables):
        raise ConfigError("replay.tables: every table has rate_limiter kind 'none', so nothing fills a batch while they "
                          "are short; give one table a 'min_size' or 'sample_to_insert_ratio' limiter")
    if not any(t.source == POLICY for t in tables):
        raise ConfigError("replay.tables: no table has source = 'policy', so the actors' policy steps have nowhere to go; "
                          "add one (the default is 'online')")


def tables_of(tables: Sequence[TableSpec], source: str) -> list[str]:
    """Names of the tables that receive steps of ``source``, in list order."""
    return [t.name for t in tables if t.source == source]


# ----------------------------------------------------------------------------- batch composition

def batch_shares(tables: Sequence[TableSpec], teacher_share: float | None = None) -> dict[str, float]:
    """Each table's share of a learner batch, summing to 1: the spec shares, or with ``teacher_share`` (the
    learner's expert-fraction schedule) the teacher tables together get that, split in the ratio of their spec
    shares, and the others the rest in the ratio of theirs (equally where those are all 0). Without a teacher
    table ``teacher_share`` has nothing to set."""
    teachers = [t for t in tables if t.source == TEACHER]
    if teacher_share is None or not teachers:
        return {t.name: t.share for t in tables}
    others = [t for t in tables if t.source != TEACHER]
    out: dict[str, float] = {}
    for group, whole in ((teachers, teacher_share), (others, 1.0 - teacher_share)):
        total = sum(t.share for t in group)
        for t in group:
            out[t.name] = whole * (t.share / total if total > 0 else 1.0 / len(group))
    return {t.name: out[t.name] for t in tables}


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder; ties to the earlier entry; all 0 = equal)."""
    s = float(sum(weights))
    exact = [total * w / s for w in weights] if s > 0 else [total / len(weights)] * len(weights)
    counts = [int(math.floor(x + 1e-9)) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------- reading a config

LEGACY_KEYS = {
    "expert_max_size": "max_size of table 'expert'",
    "online_max_size": "max_size of table 'online'",
    "alpha": "priority_exponent of every table",
    "min_size_to_sample": "the rate limiter of 'online' (and of 'expert' with expert_rate_limited = true)",
    "samples_per_insert": "the rate limiter of 'online' (and 'expert' ...): > 0 is kind 'sample_to_insert_ratio'",
    "error_buffer": "the rate limiter of 'online' (and 'expert' ...)",
    "expert_rate_limited": "the rate limiter of 'expert': the online one when true, kind 'none' when false",
}
"""Keys of the two-table form of ``[replay]`` → what they set on the table list (still read, never written)."""

NEW_FORM = ('[[replay.tables]] name = "online", max_size = 5000, share = 0.75, source = "policy", '
            'rate_limiter = { kind = "min_size", min_size_to_sample = 64 } (one block per table; '
            '--set replay.tables.online.max_size=5000 edits one field)')


def read_replay_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """``[replay]`` as read from TOML and ``--set``, with ``tables`` as a tuple of specs.

    ``tables`` (a list of TOML tables) replaces the default list; then the keys of the two-table form
    (:data:`LEGACY_KEYS`) edit the tables they always meant, and ``tables.NAME.FIELD`` (or
    ``tables.NAME.rate_limiter.FIELD``) keys edit one field of one table. Each table is built once, after
    every edit, so edits that only work together (a smaller max_size and a smaller min size) do."""
    values = dict(values)
    given = values.pop("tables", None)
    if given is None:
        given = DEFAULT_TABLES
    elif not isinstance(given, (list, tuple)):
        raise ConfigError(f"replay.tables must be a list of tables ({NEW_FORM}); got {given!r}")
    specs = [t.to_dict() if isinstance(t, TableSpec) else t for t in given]
    if all(isinstance(t, Mapping) for t in specs):  # anything else is reported by table_from_dict below
        specs = [dict(t) for t in specs]
        legacy = {k: values.pop(k) for k in list(values) if k in LEGACY_KEYS}
        if legacy:
            _apply_legacy(specs, legacy)
        for key in [k for k in values if k.startswith("tables.")]:
            _apply_edit(specs, key, values.pop(key))
    values["tables"] = tuple(table_from_dict(t, f"replay.tables[{i}]") for i, t in enumerate(specs))
    return values


def _apply_legacy(specs: list[dict[str, Any]], legacy: dict[str, Any]) -> None:
    """Edit ``specs`` (dicts, in place) as the two-table keys ``legacy`` say."""
    by_name = {t.get("name"): t for t in specs}

    def table(name: str, key: str) -> dict[str, Any]:
        if name not in by_name:
            raise ConfigError(f"replay.{key} sets table {name!r}, which replay.tables does not have "
                              f"({', '.join(map(str, by_name))}); write the setting in the table list: {NEW_FORM}")
        return by_name[name]

    def number(key: str, integer: bool = False) -> Any:
        v = legacy[key]
        if not (_is_int(v) if integer else _is_number(v)) or not math.isfinite(v):
            raise ConfigError(f"replay.{key} must be a finite {'integer' if integer else 'number'}, got {v!r}")
        return v

    for key, name in (("expert_max_size", TABLE_NAMES[0]), ("online_max_size", TABLE_NAMES[1])):
        if key in legacy:
            table(name, key)["max_size"] = number(key, integer=True)
    if "alpha" in legacy:
        for t in specs:
            t["priority_exponent"] = float(number("alpha"))
    ratio_keys = [k for k in ("min_size_to_sample", "samples_per_insert", "error_buffer") if k in legacy]
    flag = legacy.get("expert_rate_limited")
    if flag is not None and not isinstance(flag, bool):
        raise ConfigError(f"replay.expert_rate_limited must be true or false, got {flag!r}")
    if not ratio_keys and flag is None:
        return
    online = table(TABLE_NAMES[1], (ratio_keys or ["expert_rate_limited"])[0])
    n, spi, eb = _legacy_view(online.get("rate_limiter"))
    n = number("min_size_to_sample", integer=True) if "min_size_to_sample" in legacy else n
    spi = number("samples_per_insert") if "samples_per_insert" in legacy else spi
    eb = number("error_buffer") if "error_buffer" in legacy else eb
    if spi < 0:
        raise ConfigError(f"replay.samples_per_insert must be >= 0 (0 = no ratio), got {spi!r}")
    # 0 was 'no minimum'; an empty table could not be sampled either way
    limiter = (SampleToInsertRatio(float(spi), max(1, n), float(eb)) if spi > 0 else MinSize(max(1, n))).to_dict()
    online["rate_limiter"] = limiter
    if flag is not None:
        table(TABLE_NAMES[0], "expert_rate_limited")["rate_limiter"] = limiter if flag else NoLimit().to_dict()


def _legacy_view(limiter: Any) -> tuple[int, float, float]:
    """(min_size_to_sample, samples_per_insert, error_buffer) of a limiter (or its dict) as the two-table form wrote
    them (0 = no ratio; a table without a limiter had the old default 64)."""
    d = limiter.to_dict() if isinstance(limiter, RateLimiter) else limiter or MinSize(64).to_dict()
    if not isinstance(d, Mapping) or d.get("kind") == NoLimit.kind:
        return 64, 0.0, 0.0
    ratio = d.get("kind") == SampleToInsertRatio.kind
    return (d.get("min_size_to_sample", 64), d.get("samples_per_insert", 0.0) if ratio else 0.0,
            d.get("error_buffer", 0.0) if ratio else 0.0)


def _apply_edit(specs: list[dict[str, Any]], key: str, value: Any) -> None:
    """Edit one field of one table of ``specs`` (dicts, in place): ``key`` is tables.NAME.FIELD or
    tables.NAME.rate_limiter.FIELD."""
    parts = key.split(".")
    names = [t.get("name") for t in specs]
    if len(parts) < 3 or parts[1] not in names:
        raise ConfigError(f"replay.{key}: give replay.tables.NAME.FIELD with NAME one of {', '.join(map(str, names))} "
                          "(to add a table, write the whole list: replay.tables = [...])")
    spec = specs[names.index(parts[1])]
    if parts[2] == "rate_limiter" and len(parts) == 4:
        old = spec.get("rate_limiter", MinSize(64))
        spec["rate_limiter"] = {**(old.to_dict() if isinstance(old, RateLimiter) else old), parts[3]: value}
    elif len(parts) == 3 and parts[2] in TABLE_FIELDS:
        spec[parts[2]] = value
    else:
        raise ConfigError(f"replay.{key}: a table has {', '.join(TABLE_FIELDS)} (rate_limiter.FIELD for one field "
                          "of its rate limiter)")
