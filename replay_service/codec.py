"""Versioned binary encoding of one transition. No pickle: bytes read from Redis are untrusted.

Layout (little-endian), version 1 (version 2 below)::

    header   24 bytes  magic b"RXRL", version u16, flags u16, n_atoms u32, env_dim u32,
                       n_edges u32 (obs), n_edges u32 (next_obs)
    floats   f64 x F   reward, a_back, energy, next_energy,
                       obs: positions [n,3], cell [3,3], forces [n,3], env_features [d],
                       next_obs: the same four, action [n,3], actual_move [n,3],
                       expert_action [n,3] (flag HAS_EXPERT),
                       obs.history [n,6K], next_obs.history [n,6K] (flag HAS_HISTORY;
                       K − 1 in flag bits 8–11, so K = 1..16 remembered steps)
                       environment steps n the transition spans (Transition.n_steps): n − 1 in flag
                       bits 12–15, so n = 1..16 (0, n = 1, in payloads written before n-step returns)
    numbers  u8 x n    atomic numbers of obs; again for next_obs only with flag NEXT_NUMBERS
    pbc      u8 x 2    bit i = periodic along cell vector i (obs, next_obs)
    edges    per observation with an edge list: edge_index u32 [2,E], edge_shift i8 [E,3]
                       (i32 with flag WIDE_SHIFTS)

Version 2 is version 1 with 8 more header bytes, extension flags u32 and a u32 (0, or the probe count k
with PROBES), and one more block of floats after the others for each extension flag set. It is written
only for transitions that need an extension, so everything else stays byte for byte version 1, and
version-1 payloads decode as before. The extensions::

    CELL_ROWS (ext bit 0)  the cell relaxes too (Observation.cell_forces): action, actual_move and
                       expert_action have n + 3 rows, of which the version-1 layout holds the first n;
                       this block holds obs.cell_forces [3,3], next_obs.cell_forces [3,3], the cell rows
                       of action, actual_move and expert_action [3,3] each (expert with HAS_EXPERT),
                       obs.cell_history [3,6K], next_obs.cell_history [3,6K] (with HAS_HISTORY)

    FREE (ext bit 1)   coordinates held by ASE constraints (Observation.free): obs.free [n,3] as 0.0/1.0; next_obs
                       gets the same mask (constraints hold for the whole episode)
    PROBES (ext bit 2) Hessian columns measured at obs (Transition.probe_atoms, probe_columns: training-only
                       curvature for the model-Hessian head): k, the number of probed atoms, in the header's
                       reserved u32; then probe_atoms [k] (atom indices as floats) and probe_columns [k,n,3,3] (eV/Å²)
The extension blocks follow each other in the order of their bits.

Decoding checks the magic, the version, the flags, that the length is exactly what the
header implies, that every float is finite and that edge indices point at atoms; any
failure is a :class:`CodecError` and nothing else. Decoded arrays are writable.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from common.errors import RelaxRLError
from common.observation import Observation
from common.transition import Transition

MAGIC = b"RXRL"
VERSION = 1
"""The version written for transitions without extensions (every one of a run that does not relax cells)."""
VERSION_EXT = 2
"""The version written for transitions with an extension (module docstring); both are read."""

# flag bits
TERMINATED = 1
TRUNCATED = 2
HAS_EXPERT = 4
OBS_EDGES = 8
NEXT_EDGES = 16
NEXT_NUMBERS = 32
WIDE_SHIFTS = 64
HAS_HISTORY = 128
HISTORY_STEPS_SHIFT = 8  # bits 8–11: remembered steps K − 1 of the history (0 in payloads written before K existed)
HISTORY_STEPS_MASK = 0xF << HISTORY_STEPS_SHIFT
MAX_HISTORY_STEPS = 16
N_STEPS_SHIFT = 12  # bits 12–15: environment steps n − 1 the transition spans
N_STEPS_MASK = 0xF << N_STEPS_SHIFT
MAX_N_STEPS = 16
_KNOWN_FLAGS = (TERMINATED | TRUNCATED | HAS_EXPERT | OBS_EDGES | NEXT_EDGES | NEXT_NUMBERS | WIDE_SHIFTS | HAS_HISTORY
                | HISTORY_STEPS_MASK | N_STEPS_MASK)

_HEADER = struct.Struct("<4sHHIIII")
_EXT = struct.Struct("<II")  # version 2: extension flags, reserved (0); keeps the floats 8-byte aligned
EXT_CELL_ROWS = 1
EXT_FREE = 2
EXT_PROBES = 4
_KNOWN_EXT = EXT_CELL_ROWS | EXT_FREE | EXT_PROBES
_MAX_PROBES = 1024
_CELL = 3  # rows the cell adds (common.observation.CELL_ROWS)
_N_SCALARS = 4  # reward, a_back, energy, next_energy
_MAX_ATOMS = 1 << 24  # a sanity bound for encode; decode is bounded by the payload length

# the 8 possible pbc bytes, decoded once
_PBC_TABLE = np.array([[(b >> i) & 1 == 1 for i in range(3)] for b in range(8)])  # [8, 3] bool


class CodecError(RelaxRLError, ValueError):
    """A transition cannot be encoded, or bytes are not a valid encoded transition."""


# ----------------------------------------------------------------------------- encode


def _floats(name: str, x: object, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise CodecError(f"transition.{name} has dtype {a.dtype}, expected a real float array of shape {shape}")
    if a.shape != shape:
        raise CodecError(f"transition.{name} has shape {a.shape}, expected {shape}")
    return a.astype(np.float64, copy=False).ravel()


def _history_steps(name: str, h: object, n: int) -> int:
    """K of a history array [n, 6 K] (1 ≤ K ≤ 16); CodecError otherwise."""
    shape = np.shape(h)
    if len(shape) != 2 or shape[0] != n or shape[1] % 6 or not 1 <= shape[1] // 6 <= MAX_HISTORY_STEPS:
        raise CodecError(f"transition.{name} has shape {shape}, expected ({n}, 6·K) with K = 1..{MAX_HISTORY_STEPS} "
                         "remembered steps")
    return shape[1] // 6


def _history_flags(k: int) -> int:
    return HAS_HISTORY | ((k - 1) << HISTORY_STEPS_SHIFT)


def _item_flags(t: Transition) -> int:
    """The flag bits of one transition's own fields (terminated, truncated, ``n_steps`` 1..16); CodecError for a
    bad ``n_steps``."""
    n = t.n_steps
    if type(n) is not int or not 1 <= n <= MAX_N_STEPS:
        raise CodecError(f"transition.n_steps is {n!r}, expected an int of 1..{MAX_N_STEPS} environment steps "
                         "(learner.n_step)")
    return (TERMINATED if t.terminated else 0) | (TRUNCATED if t.truncated else 0) | ((n - 1) << N_STEPS_SHIFT)


def _flag_history_steps(flags: int) -> int:
    """Remembered steps K of a payload's history (0 without HAS_HISTORY)."""
    return (((flags & HISTORY_STEPS_MASK) >> HISTORY_STEPS_SHIFT) + 1) if flags & HAS_HISTORY else 0


def _numbers(name: str, x: object, n: int) -> np.ndarray:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.dtype.kind not in "iu" or a.shape != (n,):
        raise CodecError(f"transition.{name} has dtype {a.dtype} and shape {a.shape}, expected integer [{n}]")
    if a.dtype == np.uint8:
        return a
    a8 = a.astype(np.uint8)
    if not (a8 == a).all():
        raise CodecError(f"transition.{name} holds atomic numbers outside 0..255")
    return a8


def _pbc_byte(name: str, x: object) -> int:
    a = x if isinstance(x, np.ndarray) else np.asarray(x)
    if a.shape != (3,) or a.dtype.kind not in "biu":
        raise CodecError(f"transition.{name} has dtype {a.dtype} and shape {a.shape}, expected bool [3]")
    b = a.tolist()
    return (1 if b[0] else 0) | (2 if b[1] else 0) | (4 if b[2] else 0)


def _edges(name: str, o: Observation, n: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    if o.edge_index is None and o.edge_shift is None:
        return None
    if o.edge_index is None or o.edge_shift is None:
        raise CodecError(f"transition.{name}: edge_index and edge_shift must be given together")
    ei, es = np.asarray(o.edge_index), np.asarray(o.edge_shift)
    if ei.dtype.kind not in "iu" or ei.ndim != 2 or ei.shape[0] != 2:
        raise CodecError(f"transition.{name}.edge_index has dtype {ei.dtype} and shape {ei.shape}, expected integer [2, E]")
    e = ei.shape[1]
    if es.dtype.kind not in "iu" or es.shape != (e, 3):
        raise CodecError(f"transition.{name}.edge_shift has dtype {es.dtype} and shape {es.shape}, expected integer [{e}, 3]")
    if e and (ei.min() < 0 or ei.max() >= n):
        raise CodecError(f"transition.{name}.edge_index points outside the {n} atoms")
    if e and (np.abs(es).max() > np.iinfo(np.int32).max):
        raise CodecError(f"transition.{name}.edge_shift holds cell shifts beyond int32")
    return e, ei.astype("<u4"), es


_FLOAT_NAMES = ("obs.positions", "obs.cell", "obs.forces", "obs.env_features", "next_obs.positions", "next_obs.cell",
                "next_obs.forces", "next_obs.env_features", "action", "actual_move", "expert_action",
                "obs.history", "next_obs.history")


def _prepare(t: Transition) -> tuple[int, int, int, list[int], list[np.ndarray], list[bytes], list]:
    """Validate one transition: (flags | ext flags << 16 | probes << 32, n, d, n_edges, float parts in layout
    order, tail bytes, fields). Checked in layout order, so the first bad field is the one named."""
    o0, o1, n, d = _observations(t)
    fields = _Fields()
    flags, ext, moves = _base_fields(t, n, d, _item_flags(t), fields)
    ext, n_probes = _extension_fields(t, n, flags, ext, moves, fields)
    parts = fields.parts(t)
    flags, tail, n_edges = _tail(o0, o1, n, flags)
    return flags | (ext << 16) | (n_probes << 32), n, d, n_edges, parts, tail, fields.pairs()


class _Fields:
    """The float fields of one transition in layout order: name, value, shape."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.values: list = []
        self.shapes: list[tuple[int, ...]] = []

    def add(self, names: list[str], values: list, shapes: list[tuple[int, ...]]) -> None:
        self.names += names
        self.values += values
        self.shapes += shapes

    def parts(self, t: Transition) -> list[np.ndarray]:
        """The scalars, then every field checked against its shape and flattened to float64."""
        try:
            parts = [np.array((t.reward, t.a_back, t.obs.energy, t.next_obs.energy), dtype=np.float64)]
        except (TypeError, ValueError):
            raise CodecError("transition.reward, a_back and the observations' energy must be real numbers") from None
        for i, (x, shape) in enumerate(zip(self.values, self.shapes)):
            if not isinstance(x, np.ndarray):
                x = np.asarray(x)
            if x.shape != shape or x.dtype.kind not in "fiu":
                _floats(self.names[i], x, shape)  # raises the precise error
            parts.append(x.reshape(-1))
        return parts

    def pairs(self) -> list:
        return list(zip(self.names, self.values))


def _observations(t: Transition) -> tuple[Observation, Observation, int, int]:
    """(obs, next_obs, n atoms, d env features) of a transition; CodecError for anything else."""
    if not isinstance(t, Transition):
        raise CodecError(f"expected a Transition, got {type(t).__name__}")
    o0, o1 = t.obs, t.next_obs
    if not isinstance(o0, Observation) or not isinstance(o1, Observation):
        raise CodecError("transition.obs and transition.next_obs must be common.observation.Observation")
    nums = o0.numbers
    n = nums.shape[0] if isinstance(nums, np.ndarray) and nums.ndim == 1 else (
        int(np.shape(nums)[0]) if np.ndim(nums) == 1 else -1)
    if n < 0 or n > _MAX_ATOMS:
        raise CodecError(f"transition.obs.numbers has shape {np.shape(nums)}, expected [n_atoms]")
    env0 = o0.env_features
    return o0, o1, n, env0.size if isinstance(env0, np.ndarray) else int(np.size(env0))


def _base_fields(t: Transition, n: int, d: int, flags: int, fields: _Fields) -> tuple[int, int, list]:
    """Version 1's fields into ``fields``: both observations, the moves' atom rows, the histories. Returns the
    flags, the extension flags so far (EXT_CELL_ROWS when the cell relaxes) and the moves as (name, value)."""
    o0, o1 = t.obs, t.next_obs
    if (o0.cell_forces is None) != (o1.cell_forces is None):
        raise CodecError("transition.obs.cell_forces and next_obs.cell_forces must be given together (or neither)")
    ext = EXT_CELL_ROWS if o0.cell_forces is not None else 0
    act = (n + _CELL if ext else n, 3)  # the rows of a move
    moves = [("action", t.action), ("actual_move", t.actual_move)]
    if t.expert_action is not None:
        flags |= HAS_EXPERT
        moves.append(("expert_action", t.expert_action))
    for name, x in moves:
        if np.shape(x) != act:
            _floats(name, x, act)  # raises the precise error
    vec, dd = (n, 3), (d,)
    fields.add(list(_FLOAT_NAMES[:8]), [o0.positions, o0.cell, o0.forces, o0.env_features, o1.positions, o1.cell,
                                        o1.forces, o1.env_features], [vec, (3, 3), vec, dd, vec, (3, 3), vec, dd])
    fields.add([name for name, _ in moves], [np.asarray(x)[:n] for _, x in moves], [vec] * len(moves))
    if (o0.history is None) != (o1.history is None):
        raise CodecError("transition.obs.history and next_obs.history must be given together (or neither)")
    if o0.history is not None:
        k = _history_steps("obs.history", o0.history, n)
        flags |= _history_flags(k)
        fields.add(["obs.history", "next_obs.history"], [o0.history, o1.history], [(n, 6 * k)] * 2)
    return flags, ext, moves


def _extension_fields(t: Transition, n: int, flags: int, ext: int, moves: list, fields: _Fields) -> tuple[int, int]:
    """The extension blocks' fields into ``fields`` (module docstring): the cell block, the free mask, the curvature
    probes. Returns the extension flags and the number of probed atoms."""
    o0, o1 = t.obs, t.next_obs
    k = _flag_history_steps(flags)
    if ext:  # the cell block, after everything version 1 holds
        fields.add(["obs.cell_forces", "next_obs.cell_forces"] + [f"{m} (cell rows)" for m, _ in moves],
                   [o0.cell_forces, o1.cell_forces] + [np.asarray(x)[n:] for _, x in moves], [(_CELL, 3)] * (2 + len(moves)))
        for name, o in (("obs", o0), ("next_obs", o1)):
            if (o.cell_history is None) != (o.history is None):
                raise CodecError(f"transition.{name}.cell_history must be given exactly when its history is "
                                 "(the cell rows of the path history)")
        if k:
            fields.add(["obs.cell_history", "next_obs.cell_history"], [o0.cell_history, o1.cell_history],
                       [(_CELL, 6 * k)] * 2)
    elif o0.cell_history is not None or o1.cell_history is not None:
        raise CodecError("transition has a cell_history without cell_forces; give both (the cell relaxes) or neither")
    if o0.free is not None:
        ext |= EXT_FREE
        free = np.asarray(o0.free)
        if free.shape != (n, 3) or not np.isin(free, (0.0, 1.0)).all():
            raise CodecError(f"transition.obs.free has shape {free.shape}, expected ({n}, 3) of 0.0 (held) and 1.0 (free)")
        fields.add(["obs.free"], [free], [(n, 3)])
    n_probes = 0
    if (t.probe_atoms is None) != (t.probe_columns is None):
        raise CodecError("transition.probe_atoms and probe_columns must be given together (or neither)")
    if t.probe_atoms is not None:
        ext |= EXT_PROBES
        atoms = np.asarray(t.probe_atoms)
        n_probes = int(atoms.shape[0]) if atoms.ndim == 1 else -1
        if atoms.dtype.kind not in "iu" or not 1 <= n_probes <= _MAX_PROBES or atoms.min() < 0 or atoms.max() >= n:
            raise CodecError(f"transition.probe_atoms is {atoms!r}: expected 1..{_MAX_PROBES} atom indices in 0..{n - 1}")
        fields.add(["probe_atoms", "probe_columns"], [atoms.astype(np.float64), t.probe_columns],
                   [(n_probes,), (n_probes, n, 3, 3)])
    return ext, n_probes


def _tail(o0: Observation, o1: Observation, n: int, flags: int) -> tuple[int, list[bytes], list[int]]:
    """The bytes after the floats (numbers, next numbers where they differ, pbc, edge lists): (flags with
    NEXT_NUMBERS, WIDE_SHIFTS and the edge bits, the byte blocks, the edge count of each observation)."""
    nums = o0.numbers
    nb = _numbers("obs.numbers", nums, n).tobytes()
    tail = [nb]
    if o1.numbers is not nums:
        next_nb = _numbers("next_obs.numbers", o1.numbers, n).tobytes()
        if next_nb != nb:
            flags |= NEXT_NUMBERS
            tail.append(next_nb)
    tail.append(bytes((_pbc_byte("obs.pbc", o0.pbc), _pbc_byte("next_obs.pbc", o1.pbc))))
    n_edges = [0, 0]
    if o0.edge_index is not None or o0.edge_shift is not None or o1.edge_index is not None or o1.edge_shift is not None:
        edges = [_edges("obs", o0, n), _edges("next_obs", o1, n)]
        wide = any(e is not None and e[0] and np.abs(e[2]).max() > 127 for e in edges)
        if wide:
            flags |= WIDE_SHIFTS
        for i, (bit, e) in enumerate(zip((OBS_EDGES, NEXT_EDGES), edges)):
            if e is not None:
                flags |= bit
                n_edges[i] = e[0]
                tail.append(e[1].tobytes())
                tail.append(e[2].astype("<i4" if wide else "i1").tobytes())
    return flags, tail, n_edges


def _non_finite_error(parts: list[np.ndarray], fields: list) -> CodecError:
    bad = [name for name, x in [("reward/a_back/energy", parts[0])] + [(f[0], x) for f, x in zip(fields, parts[1:])]
           if not np.isfinite(np.asarray(x, dtype=float)).all()]
    return CodecError("transition has non-finite values (NaN or inf) in " + ", ".join(bad)
                      + "; check forces, positions and actions before inserting")


def _encode_uniform(ts: Sequence[Transition]) -> list[bytes] | None:
    """Fast path of :func:`encode_many` for a batch of one shape (same atom count and env size,
    expert actions in all or none, the same numbers in obs and next_obs, no edge lists),
    with each field validated and converted for the whole batch at once. None when the batch
    is not of that kind or anything is invalid: the general path then encodes it (or names the error)."""
    try:
        batch = _uniform_batch(ts)
    except (CodecError, TypeError, ValueError, AttributeError, IndexError):
        return None
    if batch is None:
        return None
    flags, n, d, f, numbers, pbc = batch
    m, n_float = f.shape
    length = _HEADER.size + 8 * n_float + n + 2
    rows = np.empty((m, length), dtype=np.uint8)
    rows[:, :_HEADER.size] = np.frombuffer(b"".join(_HEADER.pack(MAGIC, VERSION, fl, n, d, 0, 0) for fl in flags),
                                           dtype=np.uint8).reshape(m, _HEADER.size)
    off = _HEADER.size + 8 * n_float
    rows[:, _HEADER.size:off] = f.view(np.uint8)
    rows[:, off:off + n] = numbers
    rows[:, off + n:] = pbc
    return [r.tobytes() for r in rows]


def _uniform_shape(ts: Sequence[Transition]) -> tuple[int, int, bool, bool] | None:
    """(n, d, expert actions?, histories?) when every transition of ``ts`` has that one shape and none has an edge
    list or an extension (cell rows, a free mask, curvature probes); else None."""
    if not all(type(t) is Transition and type(t.obs) is Observation and type(t.next_obs) is Observation for t in ts):
        return None
    o = ts[0].obs
    nums = o.numbers
    if not (isinstance(nums, np.ndarray) and nums.ndim == 1 and nums.dtype.kind in "iu"):
        return None
    expert = ts[0].expert_action is not None
    history = o.history is not None
    if any(t.obs.cell_forces is not None or t.next_obs.cell_forces is not None or t.obs.free is not None
           or t.probe_atoms is not None
           or t.obs.edge_index is not None or t.obs.edge_shift is not None or t.next_obs.edge_index is not None
           or t.next_obs.edge_shift is not None or (t.expert_action is not None) != expert
           or (t.obs.history is not None) != history or (t.next_obs.history is not None) != history for t in ts):
        return None
    return nums.shape[0], o.env_features.shape[0], expert, history


def _uniform_batch(ts: Sequence[Transition]) -> tuple[list[int], int, int, np.ndarray, np.ndarray, list] | None:
    """(flags per item, n, d, floats [m, n_float] in layout order, numbers [m, n], pbc bytes per item) of a batch
    of one shape (:func:`_uniform_shape`), each field checked for the whole batch; None where the batch is not of
    that kind or a field is not as the layout wants it."""
    shape = _uniform_shape(ts)
    if shape is None:
        return None
    n, d, expert, history = shape
    m = len(ts)
    vec, dd = (n, 3), (d,)
    fields = [([t.obs.positions for t in ts], vec), ([t.obs.cell for t in ts], (3, 3)),
              ([t.obs.forces for t in ts], vec), ([t.obs.env_features for t in ts], dd),
              ([t.next_obs.positions for t in ts], vec), ([t.next_obs.cell for t in ts], (3, 3)),
              ([t.next_obs.forces for t in ts], vec), ([t.next_obs.env_features for t in ts], dd),
              ([t.action for t in ts], vec), ([t.actual_move for t in ts], vec)]
    if expert:
        fields.append(([t.expert_action for t in ts], vec))
    hk = 0
    if history:
        hk = _history_steps("obs.history", ts[0].obs.history, n)
        fields += [([t.obs.history for t in ts], (n, 6 * hk)), ([t.next_obs.history for t in ts], (n, 6 * hk))]
    base = (HAS_EXPERT if expert else 0) | (_history_flags(hk) if history else 0)
    n_float = _layout(base, n, d, 0, 0)[0]
    f = np.empty((m, n_float), dtype="<f8")
    f[:, :_N_SCALARS] = [(t.reward, t.a_back, t.obs.energy, t.next_obs.energy) for t in ts]
    col = _N_SCALARS
    for xs, want in fields:
        if not all(type(x) is np.ndarray and x.shape == want and x.dtype.kind in "fiu" for x in xs):
            return None
        size = xs[0].size
        f[:, col:col + size] = np.concatenate(xs).reshape(m, size)
        col += size
    if not np.isfinite(f).all():
        return None
    numbers = np.stack([t.obs.numbers for t in ts])  # [m, n]
    if numbers.shape != (m, n) or numbers.dtype.kind not in "iu" or numbers.min(initial=0) < 0 \
            or numbers.max(initial=0) > 255:
        return None
    for t in ts:
        if t.next_obs.numbers is not t.obs.numbers and not np.array_equal(t.next_obs.numbers, t.obs.numbers):
            return None
    pbc = [(_pbc_byte("obs.pbc", t.obs.pbc), _pbc_byte("next_obs.pbc", t.next_obs.pbc)) for t in ts]
    return [base | _item_flags(t) for t in ts], n, d, f, numbers, pbc


def encode_many(transitions: Sequence[Transition]) -> list[bytes]:
    """Encode transitions (the same bytes as :func:`encode` each, one float conversion and one
    finiteness check for the whole batch); raises :class:`CodecError` naming the item and field."""
    if len(transitions) > 1:
        fast = _encode_uniform(transitions)
        if fast is not None:
            return fast
    prepared = []
    for i, t in enumerate(transitions):
        try:
            prepared.append(_prepare(t))
        except CodecError as e:
            raise CodecError(f"{e} (item {i} of {len(transitions)})" if len(transitions) > 1 else str(e)) from None
    if not prepared:
        return []
    buf = np.concatenate([x for p in prepared for x in p[4]], dtype=np.float64)  # every item's floats, in order
    if not np.isfinite(buf).all():
        for i, p in enumerate(prepared):
            if not all(np.isfinite(np.asarray(x, dtype=float)).all() for x in p[4]):
                e = _non_finite_error(p[4], p[6])
                raise CodecError(f"{e} (item {i} of {len(prepared)})" if len(prepared) > 1 else str(e))
    raw = memoryview(buf).cast("B")
    out = []
    pos = 0
    for both, n, d, n_edges, _parts, tail, _ in prepared:
        flags, ext, n_probes = both & 0xFFFF, (both >> 16) & 0xFFFF, both >> 32
        size = 8 * _layout(flags, n, d, 0, 0, ext, n_probes)[0]
        header = (_HEADER.pack(MAGIC, VERSION_EXT if ext else VERSION, flags, n, d, n_edges[0], n_edges[1])
                  + (_EXT.pack(ext, n_probes) if ext else b""))
        out.append(b"".join([header, raw[pos:pos + size], *tail]))
        pos += size
    return out


def encode(t: Transition) -> bytes:
    """Encode a transition; raises :class:`CodecError` naming the bad field."""
    return encode_many([t])[0]


# ----------------------------------------------------------------------------- decode


def _header_size(ext: int) -> int:
    """Bytes of the header: version 1's, plus the extension fields when there are extensions."""
    return _HEADER.size + (_EXT.size if ext else 0)


def _cell_floats(flags: int, ext: int) -> int:
    """Floats of the cell block (0 without EXT_CELL_ROWS)."""
    if not ext & EXT_CELL_ROWS:
        return 0
    moves = 3 if flags & HAS_EXPERT else 2
    return 9 * (2 + moves) + 2 * _CELL * 6 * _flag_history_steps(flags)


def _layout(flags: int, n: int, d: int, e0: int, e1: int, ext: int = 0, n_probes: int = 0) -> tuple[int, int]:
    """(number of floats, total payload length) implied by a header."""
    n_float = (_N_SCALARS + 2 * (3 * n + 9 + 3 * n + d) + 2 * 3 * n + (3 * n if flags & HAS_EXPERT else 0)
               + 2 * 6 * n * _flag_history_steps(flags)) + _cell_floats(flags, ext)
    n_float += (3 * n if ext & EXT_FREE else 0) + (n_probes * (1 + 9 * n) if ext & EXT_PROBES else 0)
    shift_bytes = 12 if flags & WIDE_SHIFTS else 3
    length = _header_size(ext) + 8 * n_float + n * (2 if flags & NEXT_NUMBERS else 1) + 2
    if flags & OBS_EDGES:
        length += e0 * (8 + shift_bytes)
    if flags & NEXT_EDGES:
        length += e1 * (8 + shift_bytes)
    return n_float, length


def _group_key(b: bytes | bytearray | memoryview) -> bytes:
    """The header bytes of a payload (version 1's 24, or 32 for version 2): payloads with equal keys and sizes
    share one layout and are decoded together."""
    head = bytes(b[:_HEADER.size])
    if len(head) == _HEADER.size and head[:4] == MAGIC and struct.unpack_from("<H", head, 4)[0] == VERSION_EXT:
        return bytes(b[:_HEADER.size + _EXT.size])
    return head


def _parse_header(head: bytes, size: int) -> tuple[int, int, int, int, int, int, int, int]:
    """(flags, n, d, e0, e1, n_float, ext, n_probes) of a payload of ``size`` bytes starting with ``head``;
    CodecError if invalid."""
    if size < _HEADER.size:
        raise CodecError(f"payload of {size} bytes is shorter than the {_HEADER.size}-byte header (truncated)")
    magic, version, flags, n, d, e0, e1 = _HEADER.unpack_from(head, 0)
    if magic != MAGIC:
        raise CodecError(f"payload does not start with {MAGIC!r} (got {bytes(magic)!r}): not a relaxrl transition")
    if version not in (VERSION, VERSION_EXT):
        raise CodecError(f"payload has codec version {version}, this build reads versions {VERSION} and {VERSION_EXT}; "
                         "clear the replay tables (or use a new namespace) after upgrading relaxrl")
    ext = n_probes = 0
    if version == VERSION_EXT:
        if size < _header_size(1) or len(head) < _header_size(1):
            raise CodecError(f"payload of {size} bytes is shorter than the {_header_size(1)}-byte version-2 header "
                             "(truncated)")
        ext, reserved = _EXT.unpack_from(head, _HEADER.size)
        if ext & EXT_PROBES:
            n_probes, reserved = reserved, (0 if 1 <= reserved <= _MAX_PROBES else reserved or -1)
        if ext & ~_KNOWN_EXT or not ext or reserved:
            raise CodecError(f"payload has unknown extension flags {ext:#x} (reserved {reserved:#x})")
    if flags & ~_KNOWN_FLAGS:
        raise CodecError(f"payload has unknown flag bits {flags & ~_KNOWN_FLAGS:#x}")
    if (e0 and not flags & OBS_EDGES) or (e1 and not flags & NEXT_EDGES):
        raise CodecError("payload header lists edges without the edge flag")
    n_float, length = _layout(flags, n, d, e0, e1, ext, n_probes)
    if size != length:
        kind = "truncated" if size < length else "has trailing bytes"
        raise CodecError(f"payload of {size} bytes {kind}: header implies {length} bytes")
    return flags, n, d, e0, e1, n_float, ext, n_probes


def _decode_rows(rows: np.ndarray, flags: int, n: int, d: int, e0: int, e1: int, n_float: int, ext: int = 0,
                 n_probes: int = 0) -> list[Transition | CodecError]:
    """Decode g payloads with one header, given as the rows of a [g, length] uint8 array."""
    off = _header_size(ext)
    f = rows[:, off:off + 8 * n_float].view("<f8")  # [g, n_float] float64, a view (rows are 8-byte aligned)
    verdict = _Verdict(~np.isfinite(f).all(axis=1), "payload holds non-finite floats (NaN or inf)")
    tail = _decode_tail(rows, off + 8 * n_float, flags, n, e0, e1, verdict)
    fields = _decode_floats(f, flags, n, d, ext, n_probes, verdict)
    return _transitions(flags, fields, tail, verdict)


class _Verdict:
    """Which of g payloads are bad, and why: the first reason found for each (later checks do not overwrite it)."""

    def __init__(self, bad: np.ndarray, why: str) -> None:
        self.bad = bad  # [g] bool
        self.why = [why] * len(bad)

    def mark(self, bad: np.ndarray, why: Callable[[int], str]) -> None:
        """Payloads where ``bad`` [g] holds are bad too; ``why(i)`` says why, for those not bad already."""
        for i in np.flatnonzero(bad & ~self.bad):
            self.why[i] = why(i)
        self.bad |= bad


def _decode_tail(rows: np.ndarray, off: int, flags: int, n: int, e0: int, e1: int,
                 verdict: _Verdict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """The bytes after the floats, from ``off``: (numbers [g, n], next numbers [g, n], pbc [g, 2, 3] bool,
    [edges of obs, of next_obs]: (edge_index [g, 2, E], edge_shift [g, E, 3]) or None each)."""
    g = rows.shape[0]
    numbers = rows[:, off:off + n].astype(np.int64)  # [g, n]
    off += n
    if flags & NEXT_NUMBERS:
        next_numbers = rows[:, off:off + n].astype(np.int64)
        off += n
    else:
        next_numbers = numbers.copy()
    pbc_bytes = rows[:, off:off + 2].astype(np.intp)  # [g, 2]
    off += 2
    verdict.mark((pbc_bytes > 7).any(axis=1), lambda i: f"payload has invalid pbc bytes {pbc_bytes[i, 0]}, {pbc_bytes[i, 1]}")
    pbc = _PBC_TABLE[np.minimum(pbc_bytes, 7)]  # [g, 2, 3] bool
    wide = bool(flags & WIDE_SHIFTS)
    edges: list[tuple[np.ndarray, np.ndarray] | None] = [None, None]
    for j, (bit, e) in enumerate(((OBS_EDGES, e0), (NEXT_EDGES, e1))):
        if flags & bit:
            ei = rows[:, off:off + 8 * e].copy().view("<u4").astype(np.int64).reshape(g, 2, e)
            off += 8 * e
            sb = 12 if wide else 3
            es = rows[:, off:off + sb * e].copy().view("<i4" if wide else "i1").astype(np.int64).reshape(g, e, 3)
            off += sb * e
            if e:
                verdict.mark(ei.reshape(g, -1).max(axis=1) >= n, lambda i: f"payload edge_index points outside the {n} atoms")
            edges[j] = (ei, es)
    return numbers, next_numbers, pbc, edges


def _decode_floats(f: np.ndarray, flags: int, n: int, d: int, ext: int, n_probes: int,
                   verdict: _Verdict) -> dict[str, Any]:
    """The float block [g, n_float] as views per field (module docstring's order): per observation positions,
    cell, forces and env features; the moves; the histories; then the extension blocks."""
    g = f.shape[0]
    k = 3 * n
    views = []  # per observation: positions [g, n, 3], cell [g, 3, 3], forces [g, n, 3], env [g, d]
    p = _N_SCALARS
    for _ in range(2):
        views.append((f[:, p:p + k].reshape(g, n, 3), f[:, p + k:p + k + 9].reshape(g, 3, 3),
                      f[:, p + k + 9:p + 2 * k + 9].reshape(g, n, 3), f[:, p + 2 * k + 9:p + 2 * k + 9 + d]))
        p += 2 * k + 9 + d
    out: dict[str, Any] = {"scalars": f[:, :_N_SCALARS].tolist(),  # reward, a_back, energy, next_energy
                           "views": views, "action": f[:, p:p + k].reshape(g, n, 3),
                           "actual": f[:, p + k:p + 2 * k].reshape(g, n, 3),
                           "expert": f[:, p + 2 * k:p + 3 * k].reshape(g, n, 3) if flags & HAS_EXPERT else None}
    p += 3 * k if flags & HAS_EXPERT else 2 * k
    width = 6 * _flag_history_steps(flags)  # history columns per atom
    hw = n * width  # history floats per observation
    out["hist0"] = list(f[:, p:p + hw].reshape(g, n, width)) if flags & HAS_HISTORY else [None] * g
    out["hist1"] = list(f[:, p + hw:p + 2 * hw].reshape(g, n, width)) if flags & HAS_HISTORY else [None] * g
    p += 2 * hw if flags & HAS_HISTORY else 0
    out["cell_f0"] = out["cell_f1"] = out["cell_h0"] = out["cell_h1"] = [None] * g
    if ext & EXT_CELL_ROWS:
        p = _decode_cell_block(f, p, flags, width, out)
    out["free"] = out["probe_atoms"] = out["probe_columns"] = [None] * g
    if ext & EXT_FREE:
        masks = f[:, p:p + k].reshape(g, n, 3)
        p += k
        verdict.mark(~((masks == 0.0) | (masks == 1.0)).reshape(g, -1).all(axis=1),
                     lambda i: "payload's free mask holds values other than 0 and 1")
        out["free"] = list(masks)
    if ext & EXT_PROBES:
        idx = f[:, p:p + n_probes]
        p += n_probes
        verdict.mark(~((idx >= 0) & (idx < n) & (idx == np.round(idx))).all(axis=1),
                     lambda i: f"payload's probe_atoms are not atom indices in 0..{n - 1}")
        out["probe_atoms"] = list(np.where(np.isfinite(idx), idx, 0).astype(np.int64))
        out["probe_columns"] = list(f[:, p:p + 9 * n * n_probes].reshape(g, n_probes, n, 3, 3))
    return out


def _decode_cell_block(f: np.ndarray, p: int, flags: int, width: int, out: dict[str, Any]) -> int:
    """The cell block from float column ``p``: the cell forces of both observations, the cell rows appended to the
    moves in ``out``, the cell histories; returns the column after it."""
    g = f.shape[0]
    blocks = [f[:, p + 9 * b:p + 9 * (b + 1)].reshape(g, _CELL, 3) for b in range(5 if out["expert"] is not None else 4)]
    p += 9 * len(blocks)
    out["cell_f0"], out["cell_f1"] = list(blocks[0]), list(blocks[1])
    out["action"] = np.concatenate([out["action"], blocks[2]], axis=1)  # [g, n + 3, 3]
    out["actual"] = np.concatenate([out["actual"], blocks[3]], axis=1)
    if out["expert"] is not None:
        out["expert"] = np.concatenate([out["expert"], blocks[4]], axis=1)
    if flags & HAS_HISTORY:
        cw = _CELL * width
        out["cell_h0"] = list(f[:, p:p + cw].reshape(g, _CELL, width))
        out["cell_h1"] = list(f[:, p + cw:p + 2 * cw].reshape(g, _CELL, width))
        p += 2 * cw
    return p


def _transitions(flags: int, fields: dict[str, Any], tail: tuple, verdict: _Verdict) -> list[Transition | CodecError]:
    """One Transition per good payload (its CodecError in place of a bad one) from the group's decoded blocks."""
    numbers, next_numbers, pbc, edges = tail
    g = len(verdict.bad)
    terminated, truncated = bool(flags & TERMINATED), bool(flags & TRUNCATED)
    n_steps = ((flags & N_STEPS_MASK) >> N_STEPS_SHIFT) + 1
    none = [None] * g
    # per-item views, made by iterating over the first axis (much cheaper than indexing item by item)
    (pos0, cell0, frc0, env0), (pos1, cell1, frc1, env1) = ([list(x) for x in v] for v in fields["views"])
    nums0, nums1, pbc0, pbc1 = list(numbers), list(next_numbers), list(pbc[:, 0]), list(pbc[:, 1])
    ei0, es0 = (list(edges[0][0]), list(edges[0][1])) if edges[0] is not None else (none, none)
    ei1, es1 = (list(edges[1][0]), list(edges[1][1])) if edges[1] is not None else (none, none)
    acts, moves = list(fields["action"]), list(fields["actual"])
    experts = list(fields["expert"]) if fields["expert"] is not None else none
    hist0, hist1, free = fields["hist0"], fields["hist1"], fields["free"]
    cell_f0, cell_f1, cell_h0, cell_h1 = fields["cell_f0"], fields["cell_f1"], fields["cell_h0"], fields["cell_h1"]
    probe_atoms, probe_columns = fields["probe_atoms"], fields["probe_columns"]
    out: list[Transition | CodecError] = []
    for i in range(g):
        if verdict.bad[i]:
            out.append(CodecError(verdict.why[i]))
            continue
        r, a_back, en0, en1 = fields["scalars"][i]
        o0 = Observation(pos0[i], nums0[i], cell0[i], pbc0[i], frc0[i], en0, env0[i], ei0[i], es0[i], hist0[i],
                         cell_f0[i], cell_h0[i], free[i])
        o1 = Observation(pos1[i], nums1[i], cell1[i], pbc1[i], frc1[i], en1, env1[i], ei1[i], es1[i], hist1[i],
                         cell_f1[i], cell_h1[i], free[i])
        out.append(Transition(o0, acts[i], moves[i], r, terminated, truncated, o1, a_back, experts[i], n_steps,
                              probe_atoms[i], probe_columns[i]))
    return out


def _rows(payloads: list, size: int) -> np.ndarray:
    """The payloads (each ``size`` bytes) copied into the rows of a new writable [g, stride] uint8
    array, the stride rounded up to 8 bytes so that every row's floats are aligned."""
    stride = -(-size // 8) * 8
    rows = np.empty((len(payloads), stride), dtype=np.uint8)
    mv = memoryview(rows).cast("B")
    for r, b in enumerate(payloads):
        mv[r * stride:r * stride + size] = b.cast("B") if isinstance(b, memoryview) else b
    return rows[:, :size]


def decode_many(payloads: Sequence[bytes | bytearray | memoryview | None]) -> list[Transition | CodecError | None]:
    """Decode many payloads; each result is a Transition, the :class:`CodecError` that payload
    raises in :func:`decode` (returned, never raised), or None for a None payload.

    Payloads with the same header (same atom count, flags and edge counts, as in a batch
    from one system) are decoded together: one copy and one finiteness check per group.
    The decoded arrays are writable views into the group's arrays (no two items share memory).
    """
    out: list[Transition | CodecError | None] = [None] * len(payloads)
    groups: dict[tuple[bytes, int], list[int]] = {}
    for i, b in enumerate(payloads):
        if b is None:
            continue
        if not isinstance(b, (bytes, bytearray, memoryview)):
            out[i] = CodecError(f"expected bytes, got {type(b).__name__}")
            continue
        size = b.nbytes if isinstance(b, memoryview) else len(b)
        groups.setdefault((_group_key(b), size), []).append(i)
    for (head, size), idx in groups.items():
        try:
            layout = _parse_header(head, size)
            rows = _rows([payloads[i] for i in idx], size)  # type: ignore[misc]
            decoded = _decode_rows(rows, *layout)
        except CodecError as e:
            decoded = [e] * len(idx)
        except (TypeError, ValueError) as e:  # e.g. a non-contiguous memoryview
            decoded = [CodecError(f"payload buffer cannot be read: {e}")] * len(idx)
        for i, r in zip(idx, decoded):
            out[i] = r
    return out


def decode(b: bytes) -> Transition:
    """Decode bytes made by :func:`encode`; raises :class:`CodecError` (and nothing else) on bad input."""
    if not isinstance(b, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(b).__name__}")
    r = decode_many([b])[0]
    if isinstance(r, CodecError):
        raise r
    assert r is not None
    return r
