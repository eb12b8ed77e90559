"""The transition codec: round trips, validation on encode, rejection of bad bytes on decode."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.observation import Observation
from common.transition import Transition
from replay_service.codec import VERSION, VERSION_EXT, CodecError, decode, decode_many, encode, encode_many


def make_transition(n: int = 5, seed: int = 0, *, edges: bool = False, expert: bool = True, d: int = 2,
                    reward: float = 0.5, history: bool = False, history_steps: int = 1, cell: bool = False) -> Transition:
    """A random transition; ``cell``: the cell relaxes too (cell rows in observations, n + 3 rows per move)."""
    rng = np.random.default_rng(seed)
    rows = n + 3 if cell else n

    def obs() -> Observation:
        o = Observation(rng.normal(size=(n, 3)), rng.integers(1, 90, size=n), np.eye(3) * 4.0,
                        np.array([True, False, True]), rng.normal(size=(n, 3)), float(rng.normal()), rng.normal(size=d))
        if edges:
            o.edge_index = rng.integers(0, n, size=(2, 7))
            o.edge_shift = rng.integers(-1, 2, size=(7, 3))
        if history:
            o.history = rng.normal(size=(n, 6 * history_steps))
        if cell:
            o.cell_forces = rng.normal(size=(3, 3))
            o.cell_history = rng.normal(size=(3, 6 * history_steps)) if history else None
        return o

    return Transition(obs(), rng.normal(size=(rows, 3)), rng.normal(size=(rows, 3)), reward, True, False, obs(), 0.25,
                      rng.normal(size=(rows, 3)) if expert else None)


def assert_same(a: Transition, b: Transition) -> None:
    for name in ("action", "actual_move", "expert_action"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None and y is None) or np.array_equal(x, y), name
    assert (a.reward, a.terminated, a.truncated, a.a_back, a.n_steps) == (b.reward, b.terminated, b.truncated,
                                                                         b.a_back, b.n_steps)
    for oa, ob in ((a.obs, b.obs), (a.next_obs, b.next_obs)):
        for f in ("positions", "numbers", "cell", "pbc", "forces", "env_features", "edge_index", "edge_shift",
                  "history", "cell_forces", "cell_history"):
            x, y = getattr(oa, f), getattr(ob, f)
            assert (x is None and y is None) or (np.array_equal(x, y) and np.asarray(x).shape == np.asarray(y).shape), f
        assert oa.energy == ob.energy


@pytest.mark.parametrize("n,edges,expert,d", [(1, False, False, 0), (5, True, True, 2), (64, False, True, 3), (0, False, False, 0)])
def test_round_trip_is_exact(n, edges, expert, d):
    t = make_transition(n, edges=edges, expert=expert, d=d)
    u = decode(encode(t))
    assert_same(t, u)
    assert u.obs.positions.dtype == np.float64 and u.obs.numbers.dtype == np.int64 and u.obs.pbc.dtype == bool
    u.obs.positions[0:1] += 1.0 if n else 0.0  # decoded arrays are writable


@pytest.mark.parametrize("edges,expert,steps", [(False, False, 1), (True, True, 1), (False, True, 1), (False, True, 5),
                                                (True, False, 16)])
def test_path_history_round_trips_alone_and_in_uniform_batches(edges, expert, steps):
    ts = [make_transition(6, seed=s, edges=edges, expert=expert, history=True, history_steps=steps) for s in range(3)]
    for t, u in zip(ts, decode_many(encode_many(ts))):
        assert u.obs.history.shape == (6, 6 * steps)
        assert_same(t, u)
    assert encode_many(ts) == [encode(t) for t in ts]  # the batched path writes the same bytes
    plain = make_transition(6, history=False)
    assert decode(encode(plain)).obs.history is None


def test_history_on_one_side_only_is_refused():
    t = make_transition(3, history=True)
    t.next_obs.history = None
    with pytest.raises(CodecError, match="history"):
        encode(t)
    t = make_transition(3, history=True)
    t.obs.history = np.zeros((3, 5))
    with pytest.raises(CodecError, match=r"obs\.history has shape"):
        encode(t)
    t = make_transition(3, history=True, history_steps=2)
    t.next_obs.history = np.zeros((3, 6))  # one remembered step where obs has two
    with pytest.raises(CodecError, match=r"next_obs\.history has shape"):
        encode(t)
    t = make_transition(3, history=True, history_steps=17)
    with pytest.raises(CodecError, match=r"K = 1\.\.16"):
        encode(t)


def test_payloads_written_before_history_steps_existed_decode_as_one_step():
    """Flag bits 8–11 (K − 1) were zero in payloads of one remembered step: the same bytes as before."""
    t = make_transition(4, history=True)
    b = encode(t)
    assert struct.unpack_from("<H", b, 6)[0] & 0xF00 == 0
    assert decode(b).obs.history.shape == (4, 6)


@pytest.mark.parametrize("n_steps", [1, 3, 16])
def test_n_step_transitions_round_trip_alone_and_in_uniform_batches(n_steps):
    ts = [make_transition(4, seed=s, history=True, history_steps=5) for s in range(3)]
    for t in ts:
        t.n_steps = n_steps
    assert [u.n_steps for u in decode_many(encode_many(ts))] == [n_steps] * 3
    assert encode_many(ts) == [encode(t) for t in ts]
    mixed = [make_transition(4, seed=s) for s in range(3)]
    mixed[1].n_steps = 2  # one item of another span in a batch: still exact
    assert [u.n_steps for u in decode_many(encode_many(mixed))] == [1, 2, 1]


def test_payloads_written_before_n_step_returns_decode_as_one_step():
    b = encode(make_transition(4))
    assert struct.unpack_from("<H", b, 6)[0] & 0xF000 == 0  # the same bytes as before n_steps existed
    assert decode(b).n_steps == 1


@pytest.mark.parametrize("bad", [0, 17, 2.0, None])
def test_n_steps_outside_1_to_16_is_refused_naming_the_field(bad):
    ts = [make_transition(4, seed=s) for s in range(2)]
    ts[1].n_steps = bad
    with pytest.raises(CodecError, match=r"n_steps .*1\.\.16"):
        encode_many(ts)


def test_wide_cell_shifts_and_different_next_numbers_round_trip():
    t = make_transition(4, edges=True)
    t.obs.edge_shift = np.array([[300, 0, -1]] * 7)
    t.next_obs.numbers = t.obs.numbers[::-1].copy()
    assert_same(t, decode(encode(t)))


@pytest.mark.parametrize("mutate,match", [
    (lambda t: setattr(t, "action", np.zeros((4, 3))), r"transition\.action has shape \(4, 3\), expected \(5, 3\)"),
    (lambda t: setattr(t.next_obs, "forces", np.zeros((5, 2))), r"next_obs\.forces has shape"),
    (lambda t: setattr(t.obs, "positions", np.full((5, 3), "x")), r"obs\.positions has dtype"),
    (lambda t: setattr(t.obs, "numbers", np.array([1.5] * 5)), r"obs\.numbers has dtype float64"),
    (lambda t: t.obs.forces.__setitem__((0, 0), np.nan), r"non-finite"),
    (lambda t: setattr(t, "reward", float("inf")), r"non-finite"),
    (lambda t: setattr(t.obs, "edge_index", np.array([[0], [9]])), r"edge_index|edge_shift"),
    (lambda t: setattr(t.obs, "env_features", np.zeros(3)), r"obs\.env_features has shape"),
])
def test_encode_rejects_bad_transitions_naming_the_field(mutate, match):
    t = make_transition(5)
    mutate(t)
    with pytest.raises(CodecError, match=match):
        encode(t)


def test_decode_rejects_truncated_trailing_and_wrong_version():
    b = encode(make_transition(5))
    with pytest.raises(CodecError, match="truncated"):
        decode(b[:-1])
    with pytest.raises(CodecError, match="truncated"):
        decode(b[:10])
    with pytest.raises(CodecError, match="trailing"):
        decode(b + b"\0")
    wrong = b[:4] + struct.pack("<H", VERSION_EXT + 1) + b[6:]
    with pytest.raises(CodecError, match=f"codec version {VERSION_EXT + 1}.*reads versions {VERSION} and {VERSION_EXT}"):
        decode(wrong)
    with pytest.raises(CodecError, match="not a relaxrl transition"):
        decode(b"PK\x03\x04" + b[4:])


def test_decode_rejects_non_finite_payload():
    b = bytearray(encode(make_transition(5)))
    b[24:32] = struct.pack("<d", float("nan"))  # the reward
    with pytest.raises(CodecError, match="non-finite"):
        decode(bytes(b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_decode_of_random_bytes_raises_only_codec_error(data):
    for payload in (data, b"RXRL" + struct.pack("<H", VERSION) + data):
        try:
            decode(payload)
        except CodecError:
            pass


_VALID = encode(make_transition(3, edges=True))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_decode_of_corrupted_payload_raises_only_codec_error(flips):
    b = bytearray(_VALID)
    for i, v in flips:
        b[i] = v
    try:
        t = decode(bytes(b))
    except CodecError:
        return
    assert np.isfinite(t.obs.positions).all() and t.obs.positions.shape == (3, 3)


def _uniform_batch(m: int, expert: bool, d: int) -> list[Transition]:
    """Transitions of one 5-atom system (the batched encoder's fast path)."""
    out = []
    for i in range(m):
        t = make_transition(5, seed=i, expert=expert, d=d, reward=float(i))
        t.next_obs.numbers = t.obs.numbers
        t.terminated, t.truncated = i % 3 == 0, i % 4 == 0
        t.obs.pbc = np.array([i % 2 == 0, True, False])
        out.append(t)
    out[1].action = out[1].action.astype(np.float32)  # converted, as encode does
    return out


@pytest.mark.parametrize("kind", ["uniform", "uniform_expert", "mixed"])
def test_batched_encode_and_decode_match_one_by_one(kind):
    if kind == "mixed":  # different atom counts, edges, next numbers: the general path
        ts = [make_transition(n, seed=n, edges=n == 4, expert=n % 3 == 0) for n in (1, 4, 5, 4, 0)]
    else:
        ts = _uniform_batch(6, expert=kind == "uniform_expert", d=2)
    payloads = encode_many(ts)
    assert payloads == [encode(t) for t in ts]
    for t, u, v in zip(ts, decode_many(payloads), [decode(p) for p in payloads]):
        assert_same(t, u)
        assert_same(u, v)
        u.obs.positions += 1.0  # writable, and no other item shares its memory
    decoded = decode_many(payloads)
    decoded[0].action[:] = 7.0
    assert not any(np.any(t.action == 7.0) for t in decoded[1:])


def test_batched_decode_returns_errors_in_place_and_keeps_the_good_items():
    ts = _uniform_batch(4, expert=False, d=0)
    payloads = encode_many(ts)
    nan = bytearray(payloads[2])
    nan[24:32] = struct.pack("<d", float("nan"))
    out = decode_many([payloads[0], b"junk", bytes(nan), None, payloads[3]])
    assert isinstance(out[1], CodecError) and isinstance(out[2], CodecError) and "non-finite" in str(out[2])
    assert out[3] is None
    assert_same(out[0], ts[0])
    assert_same(out[4], ts[3])


def test_batched_encode_names_the_bad_item_and_field():
    ts = _uniform_batch(5, expert=False, d=0)
    ts[3].obs.forces = ts[3].obs.forces.copy()
    ts[3].obs.forces[1, 2] = np.inf
    with pytest.raises(CodecError, match=r"obs\.forces.*item 3 of 5"):
        encode_many(ts)
    ts = _uniform_batch(5, expert=False, d=0)
    ts[2].action = np.zeros((4, 3))
    with pytest.raises(CodecError, match=r"transition\.action has shape \(4, 3\).*item 2 of 5"):
        encode_many(ts)


# ---- cell rows (env.relax_cell): the version-2 extension ---------------------------------------------------


@pytest.mark.parametrize("n,edges,expert,history,steps", [(1, False, False, False, 1), (5, True, True, True, 1),
                                                          (8, False, True, True, 5), (0, False, False, True, 2)])
def test_cell_rows_round_trip_exactly_as_version_2(n, edges, expert, history, steps):
    t = make_transition(n, edges=edges, expert=expert, history=history, history_steps=steps, cell=True)
    b = encode(t)
    assert struct.unpack_from("<H", b, 4)[0] == VERSION_EXT
    u = decode(b)
    assert_same(t, u)
    assert u.action.shape == (n + 3, 3) and u.obs.cell_forces.shape == (3, 3)
    assert (u.obs.cell_history is None) == (not history)
    u.action[-1] += 1.0  # writable, and no item shares memory with another
    u.obs.cell_forces[0, 0] += 1.0


def test_transitions_without_cell_rows_stay_version_1_byte_for_byte():
    """A run that does not relax cells writes what it wrote before the extension existed."""
    t = make_transition(5, history=True, history_steps=3)
    b = encode(t)
    assert struct.unpack_from("<H", b, 4)[0] == VERSION
    assert decode(b).obs.cell_forces is None and decode(b).action.shape == (5, 3)
    with_cell = make_transition(5, history=True, history_steps=3, cell=True)
    assert len(encode(with_cell)) == len(b) + 8 + 8 * (9 * 5 + 2 * 3 * 18)  # ext header + the cell block only


def test_batches_mixing_cell_rows_and_plain_transitions_decode_in_place():
    ts = [make_transition(4, seed=s, history=True, cell=s % 2 == 1) for s in range(5)]
    for t, u in zip(ts, decode_many(encode_many(ts))):
        assert_same(t, u)
    same = [make_transition(4, seed=s, history=True, expert=True, cell=True) for s in range(4)]
    decoded = decode_many(encode_many(same))
    for t, u in zip(same, decoded):
        assert_same(t, u)
    assert not np.shares_memory(decoded[0].action, decoded[1].action)


@pytest.mark.parametrize("mutate,match", [
    (lambda t: setattr(t.next_obs, "cell_forces", None), r"cell_forces must be given together"),
    (lambda t: setattr(t, "action", np.zeros((4, 3))), r"transition\.action has shape \(4, 3\), expected \(7, 3\)"),
    (lambda t: setattr(t, "expert_action", np.zeros((4, 3))), r"expert_action has shape \(4, 3\), expected \(7, 3\)"),
    (lambda t: setattr(t.obs, "cell_history", None), r"obs\.cell_history must be given exactly when"),
    (lambda t: setattr(t.obs, "cell_forces", np.zeros((3, 2))), r"obs\.cell_forces has shape"),
    (lambda t: t.next_obs.cell_history.__setitem__((0, 0), np.inf), r"non-finite.*next_obs\.cell_history"),
    (lambda t: t.action.__setitem__((5, 1), np.nan), r"non-finite.*action \(cell rows\)"),
])
def test_bad_cell_rows_are_refused_naming_the_field(mutate, match):
    t = make_transition(4, history=True, cell=True)
    mutate(t)
    with pytest.raises(CodecError, match=match):
        encode(t)


def test_cell_history_without_cell_forces_is_refused():
    t = make_transition(4, history=True)
    t.obs.cell_history = np.zeros((3, 6))
    with pytest.raises(CodecError, match="cell_history without cell_forces"):
        encode(t)


def test_version_2_headers_with_unknown_extensions_or_truncation_are_refused():
    b = encode(make_transition(4, history=True, cell=True))
    with pytest.raises(CodecError, match="unknown extension flags 0x8"):
        decode(b[:24] + struct.pack("<II", 8, 0) + b[32:])
    with pytest.raises(CodecError, match="unknown extension flags"):
        decode(b[:24] + struct.pack("<II", 1, 7) + b[32:])
    with pytest.raises(CodecError, match="version-2 header"):
        decode(b[:28])
    with pytest.raises(CodecError, match="truncated"):
        decode(b[:-1])
    plain = encode(make_transition(4, history=True))  # a version-1 payload claiming version 2
    with pytest.raises(CodecError):
        decode(plain[:4] + struct.pack("<H", VERSION_EXT) + plain[6:])


def _decode_corrupted(payload: bytes, flips):
    """``payload`` with the bytes ``flips`` names overwritten, decoded; None when the codec refuses it (CodecError,
    the only error allowed)."""
    b = bytearray(payload)
    for pos, val in flips:
        b[pos % len(b)] = val
    try:
        return decode(bytes(b))
    except CodecError:
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=8))
def test_decode_of_corrupted_cell_payload_raises_only_codec_error(flips):
    u = _decode_corrupted(encode(make_transition(3, history=True, expert=True, cell=True)), flips)
    if u is not None:
        assert u.action.shape[0] in (3, 6)


def with_mask_and_probes(t: Transition, k: int = 2, seed: int = 5) -> Transition:
    """``t`` with a constraint mask (atom 0 held, atom 1's z held) and Hessian columns of ``k`` atoms."""
    rng = np.random.default_rng(seed)
    n = t.obs.n_atoms
    free = np.ones((n, 3))
    free[0] = 0.0
    free[1, 2] = 0.0
    t.obs.free = free
    t.next_obs.free = free
    t.probe_atoms = np.sort(rng.choice(np.arange(1, n), size=k, replace=False))
    t.probe_columns = rng.normal(size=(k, n, 3, 3))
    return t


@pytest.mark.parametrize("cell", [False, True])
def test_constraint_masks_and_curvature_probes_round_trip(cell: bool) -> None:
    t = with_mask_and_probes(make_transition(6, history=True, history_steps=2, cell=cell, edges=True))
    u = decode(encode(t))
    assert_same(t, u)
    np.testing.assert_array_equal(u.obs.free, t.obs.free)
    np.testing.assert_array_equal(u.next_obs.free, t.obs.free)
    np.testing.assert_array_equal(u.probe_atoms, t.probe_atoms)
    np.testing.assert_array_equal(u.probe_columns, t.probe_columns)
    plain = make_transition(6, history=True, history_steps=2)
    mixed = decode_many(encode_many([t, plain, t]))
    assert mixed[1].probe_atoms is None and mixed[1].obs.free is None and mixed[2].probe_columns.shape == (2, 6, 3, 3)
    assert encode(plain)[4:6] == struct.pack("<H", 1)  # nothing extra: still version 1, byte for byte


def test_bad_masks_and_probes_are_refused_naming_the_field() -> None:
    t = with_mask_and_probes(make_transition(5))
    t.obs.free = t.obs.free * 0.5
    with pytest.raises(CodecError, match="obs.free"):
        encode(t)
    t = with_mask_and_probes(make_transition(5))
    t.probe_atoms = np.array([7])
    t.probe_columns = np.zeros((1, 5, 3, 3))
    with pytest.raises(CodecError, match="probe_atoms"):
        encode(t)
    t = with_mask_and_probes(make_transition(5))
    t.probe_columns = None
    with pytest.raises(CodecError, match="together"):
        encode(t)
    b = bytearray(encode(with_mask_and_probes(make_transition(5))))
    k = struct.unpack_from("<I", b, 28)[0]
    struct.pack_into("<I", b, 28, k + 1)  # a probe count the payload does not hold
    with pytest.raises(CodecError, match="truncated"):
        decode(bytes(b))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=8))
def test_decode_of_corrupted_probe_payload_raises_only_codec_error(flips):
    u = _decode_corrupted(encode(with_mask_and_probes(make_transition(4, history=True, expert=True))), flips)
    if u is None:
        return
    if u.probe_atoms is not None:
        assert ((u.probe_atoms >= 0) & (u.probe_atoms < 4)).all() and u.probe_columns.shape[1:] == (4, 3, 3)
    if u.obs.free is not None:
        assert np.isin(u.obs.free, (0.0, 1.0)).all()
