"""Tables kept in Redis: their key layout and the Lua scripts that change them.

What a table is (name, ``max_size`` with FIFO removal, a proportional prioritized sampler with
exponent α, a share of each batch, a source, a rate limiter) is its spec,
:class:`common.replay_tables.TableSpec`, after Reverb's ``Table``; the service takes a list of
them. Here is how a table lives in Redis.

Redis layout of table ``T`` under namespace ``NS`` (all state lives here, so a restarted
client or server continues where it was)::

    NS:T:meta        hash    settings (layout, capacity, alpha, block, limiter) and counters
                             (cursor = keys ever reserved = next key, samples, updates, decode_errors, ...)
    NS:T:leaf        string  16 bytes per slot: float64 w = priority^α, float64 priority
    NS:T:agg         string  24 bytes per block of ``block`` slots: float64 sum w, min positive w, max priority
    NS:T:it:KEY      string  the encoded transition of item KEY (one Redis string per item)
    NS:T:quarantine  hash    KEY -> stored bytes of items that failed to decode (kept for inspection)
    NS:T:tok:*       string  idempotency tokens of recent reservations (expire), so a retried insert is not doubled

Keys are int64, increasing from 0; key ``k`` lives in slot ``k % capacity`` and is live
while ``cursor - capacity <= k < cursor``, so an update for an overwritten slot is
recognised as stale without storing keys per slot. The priority index is a two-level
sum tree: block aggregates (a few thousand values, read whole) over leaf runs (read with
one GETRANGE each). Sampling is stratified: the client sends one uniform number per item
(Redis Lua's generator is deterministic), the script walks blocks then leaves.

Payloads never pass through Lua (copying megabytes through the interpreter cost Redis
several times more CPU than storing them). An insert is three steps:

1. ``reserve`` (script): the rate limiter grants k items; the cursor advances by k; the k
   slots get priority 0 (unsampleable) and the payloads of the items they evict are deleted.
2. ``MSET NS:T:it:KEY payload ...`` (plain command) writes the payloads under their own keys.
3. ``commit`` (script, pipelined after the MSET on the same connection): gives the reserved
   slots their priorities, so only then can a sampler pick them. A key evicted in between
   (another writer lapped the table) is skipped and its payload deleted.

A sampler therefore only picks items whose payload is stored, and since a payload's Redis
key holds the item key, it can never read another item's bytes: it fetches the payloads
with one MGET after the ``sample`` script, and a payload evicted in between reads as nil
(the client draws a replacement). A writer that dies between the steps leaves slots of
priority 0, which FIFO removal reclaims. The scripts touch payload keys they build from
the prefix they are given, so tables need a single Redis server (not Redis Cluster).

A sample draws from every table of the list in one ``sample`` script, so the rate limiters
of all tables are checked and their counters move together: each table gives its count (the
client splits the batch by share), a table without a rate limiter (``limited`` 0) at most
what it holds, and the shortfall goes to the rate-limited tables in the ratio of their shares.

Tables written before the table list (two fixed tables, the same layout 2) load as they are:
key names, meta fields and encoding did not change, and ``create`` rewrites the rate-limiter
fields of a table whose layout, capacity, α and block match (tests/test_replay_layout.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from common.replay_tables import TableSpec

LAYOUT_VERSION = 2  # 2: one Redis string per item (NS:T:it:KEY), reserve/commit inserts


def block_size(capacity: int) -> int:
    """Leaves per block: about sqrt(capacity/128) as a power of two, within [16, 256].

    A sample of B items reads all ~3·capacity/block aggregates and B leaf runs of ``block``
    leaves, an update recomputes up to B blocks: about sqrt(capacity/128) balances them for
    batches of a few hundred (32 for 100k slots: 1.2 ms per sample and per update of 256 in
    Redis 6.2, against 1.3 and 1.6 ms with 64)."""
    target = max(1.0, math.sqrt(capacity / 128))
    return int(min(256, max(16, 2 ** round(math.log2(target)))))


def create_args(spec: TableSpec) -> list:
    """ARGV of the CREATE script for ``spec``: its layout, and its rate limiter as Reverb represents one
    (min_size_to_sample, samples_per_insert, min_diff, max_diff; ``limited`` 0 for a table without one)."""
    min_size, spi, min_diff, max_diff = spec.rate_limiter.bounds
    eb = getattr(spec.rate_limiter, "error_buffer", 0.0)
    return [LAYOUT_VERSION, spec.max_size, repr(float(spec.priority_exponent)), block_size(spec.max_size), min_size,
            repr(float(spi)), repr(float(eb)), repr(float(min_diff)), repr(float(max_diff)), int(spec.rate_limiter.blocks)]


@dataclass(frozen=True)
class TableKeys:
    """Redis key names of one table (see the module docstring)."""

    meta: str
    leaf: str
    agg: str
    item_prefix: str  # + str(key): the item's payload
    quarantine: str
    token_prefix: str

    @classmethod
    def of(cls, namespace: str, table: str) -> TableKeys:
        p = f"{namespace}:{table}"
        return cls(f"{p}:meta", f"{p}:leaf", f"{p}:agg", f"{p}:it:", f"{p}:quarantine", f"{p}:tok:")

    def item(self, key: int) -> str:
        """Redis key of the payload of item ``key``."""
        return f"{self.item_prefix}{int(key)}"


# ----------------------------------------------------------------------------- Lua

# Shared helpers, prepended to each script. Lua 5.1 with the `struct` library; numbers
# are doubles (keys are exact below 2^53). Numbers leave scripts as packed doubles or as
# '%d' strings: a Lua number in a reply would be truncated to an integer by Redis.
_PRELUDE = r"""
local FMT = {}
local function fmt(m)
  local f = FMT[m]
  if not f then f = '<' .. string.rep('d', m); FMT[m] = f end
  return f
end
-- count doubles from string s starting at byte pos (1-based), as a Lua array
local function read_doubles(s, count, pos)
  pos = pos or 1
  if count <= 4000 then
    local v = {struct.unpack(fmt(count), s, pos)}
    v[count + 1] = nil
    return v
  end
  local out, done = {}, 0
  while done < count do
    local m = math.min(4000, count - done)
    local v = {struct.unpack(fmt(m), s, pos)}
    pos = v[m + 1]
    for i = 1, m do out[done + i] = v[i] end
    done = done + m
  end
  return out
end
local function pack_doubles(t, count)
  local parts, done = {}, 0
  while done < count do
    local m = math.min(4000, count - done)
    parts[#parts + 1] = struct.pack(fmt(m), unpack(t, done + 1, done + m))
    done = done + m
  end
  return table.concat(parts)
end
local function num(x) return string.format('%d', x) end
local function meta(key)
  local m = redis.call('HMGET', key, 'capacity', 'alpha', 'block', 'min_size', 'spi', 'min_diff', 'max_diff',
                       'cursor', 'samples', 'limited')
  if not m[1] then return nil end
  return {cap = tonumber(m[1]), alpha = tonumber(m[2]), block = tonumber(m[3]), min_size = tonumber(m[4]),
          spi = tonumber(m[5]), min_diff = tonumber(m[6]), max_diff = tonumber(m[7]), cursor = tonumber(m[8]),
          samples = tonumber(m[9]), limited = tonumber(m[10])}
end
-- recompute the aggregates of block b (0-based) exactly from its leaves
local function recompute_block(leaf, agg, b, block, size)
  local first = b * block
  local filled = math.min(block, size - first)
  local sum, mn, mx = 0, math.huge, 0
  if filled > 0 then
    local v = read_doubles(redis.call('GETRANGE', leaf, first * 16, (first + filled) * 16 - 1), 2 * filled)
    for j = 1, 2 * filled, 2 do
      local w = v[j]
      sum = sum + w
      if w > 0 and w < mn then mn = w end
      if v[j + 1] > mx then mx = v[j + 1] end
    end
  end
  redis.call('SETRANGE', agg, b * 24, struct.pack('<ddd', sum, mn, mx))
end
local function weight(p, alpha)
  if p > 0 then return p ^ alpha end
  return 0
end
-- write count 16-byte leaf records (string recs) for keys k0 .. k0+count-1, wrapping around
-- the ring of cap slots; adds the blocks touched to (touched, list)
local function write_leaves(leaf, cap, block, k0, count, recs, touched, list)
  local i = 0
  while i < count do
    local slot = (k0 + i) % cap
    local run = math.min(count - i, cap - slot)
    redis.call('SETRANGE', leaf, slot * 16, string.sub(recs, i * 16 + 1, (i + run) * 16))
    for b = math.floor(slot / block), math.floor((slot + run - 1) / block) do
      if not touched[b] then touched[b] = true; list[#list + 1] = b end
    end
    i = i + run
  end
end
-- delete the payloads of keys lo .. hi-1 (they left the table)
local function drop_payloads(prefix, lo, hi)
  local names, nn = {}, 0
  for key = lo, hi - 1 do
    nn = nn + 1
    names[nn] = prefix .. num(key)
    if nn >= 1000 or key == hi - 1 then
      redis.call('UNLINK', unpack(names, 1, nn))
      nn = 0
    end
  end
end
-- the largest priority in the table (1.0 when there is none yet)
local function max_priority(agg, size, block)
  local pmax = 0
  if size > 0 then
    local nb = math.ceil(size / block)
    local a = read_doubles(redis.call('GETRANGE', agg, 0, nb * 24 - 1), 3 * nb)
    for i = 3, 3 * nb, 3 do if a[i] > pmax then pmax = a[i] end end
  end
  if pmax <= 0 then pmax = 1.0 end
  return pmax
end
"""

# KEYS: meta leaf agg ; ARGV: layout capacity alpha block min_size spi error_buffer min_diff max_diff limited
# Creates the table if absent (zeroed leaves and aggregates), refreshes the limiter settings if present.
# Returns {status, layout, capacity, alpha, block} of the table as stored.
CREATE = _PRELUDE + r"""
local m = redis.call('HMGET', KEYS[1], 'layout', 'capacity', 'alpha', 'block')
if m[1] then
  if m[1] == ARGV[1] and m[2] == ARGV[2] and m[3] == ARGV[3] and m[4] == ARGV[4] then
    redis.call('HSET', KEYS[1], 'min_size', ARGV[5], 'spi', ARGV[6], 'error_buffer', ARGV[7],
               'min_diff', ARGV[8], 'max_diff', ARGV[9], 'limited', ARGV[10])
  end
  return {'exists', m[1], m[2], m[3], m[4]}
end
local cap, block = tonumber(ARGV[2]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'layout', ARGV[1], 'capacity', ARGV[2], 'alpha', ARGV[3], 'block', ARGV[4],
           'min_size', ARGV[5], 'spi', ARGV[6], 'error_buffer', ARGV[7], 'min_diff', ARGV[8], 'max_diff', ARGV[9],
           'limited', ARGV[10], 'cursor', 0, 'samples', 0, 'updates', 0, 'stale_updates', 0,
           'insert_waits', 0, 'sample_waits', 0, 'decode_errors', 0)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SETRANGE', KEYS[2], cap * 16 - 1, '\0')
redis.call('SETRANGE', KEYS[3], math.ceil(cap / block) * 24 - 1, '\0')
return {'created', ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
"""

# KEYS: meta leaf agg token ; ARGV: n, item_prefix
# Step 1 of an insert. Grants as many of n items as the rate limiter allows now (Reverb
# CanInsert, item by item), advances the cursor over them, gives their slots priority 0
# (so no sampler picks them before their payloads are stored) and deletes the payloads of
# the items they evict. Returns {granted, first_key}. A retried call with the same token
# returns the first call's answer.
RESERVE = _PRELUDE + r"""
local done = redis.call('GET', KEYS[4])
if done then
  local k, first = string.match(done, '^(%d+):(%d+)$')
  return {tonumber(k), first}
end
local t = meta(KEYS[1])
if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
local n = tonumber(ARGV[1])
local cap, cursor = t.cap, t.cursor
local k = n
if t.limited == 1 then
  k = 0
  while k < n do
    local ins = cursor + k + 1
    if math.min(ins, cap) <= t.min_size or ins * t.spi - t.samples <= t.max_diff then k = k + 1 else break end
  end
end
if k == 0 then return {0, num(cursor)} end
-- keys cursor .. cursor+skip-1 would be overwritten within this same call (k > capacity)
local skip = math.max(0, k - cap)
local touched, list = {}, {}
write_leaves(KEYS[2], cap, t.block, cursor + skip, k - skip, string.rep('\0', 16 * (k - skip)), touched, list)
local evicted_hi = math.min(cursor, cursor + k - cap)
if evicted_hi > 0 then drop_payloads(ARGV[2], math.max(0, cursor - cap), evicted_hi) end
local size = math.min(cursor + k, cap)
for _, b in ipairs(list) do recompute_block(KEYS[2], KEYS[3], b, t.block, size) end
redis.call('HSET', KEYS[1], 'cursor', num(cursor + k))
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], num(k) .. ':' .. num(cursor), 'EX', 3600) end
return {k, num(cursor)}
"""

# KEYS: meta leaf agg ; ARGV: first_key, n, packed priorities [n] ('' = the table's current max), item_prefix
# Step 3 of an insert, after the payloads of keys first .. first+n-1 are stored: gives the
# live ones their priorities. Keys evicted since they were reserved (a prefix, FIFO) are
# skipped and their just-written payloads deleted. Returns the number of items published.
COMMIT = _PRELUDE + r"""
local t = meta(KEYS[1])
if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
local first, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, cursor = t.cap, t.cursor
local dead = math.min(n, math.max(0, (cursor - cap) - first))
if dead > 0 then drop_payloads(ARGV[4], first, first + dead) end
local live = n - dead
if live <= 0 then return 0 end
local size = math.min(cursor, cap)
local recs
if ARGV[3] == '' then
  local pmax = max_priority(KEYS[3], size, t.block)
  recs = string.rep(struct.pack('<dd', weight(pmax, t.alpha), pmax), live)
else
  local p = read_doubles(ARGV[3], n)
  local v = {}
  for i = 1, live do
    local pi = p[dead + i]
    v[2 * i - 1] = weight(pi, t.alpha); v[2 * i] = pi
  end
  recs = pack_doubles(v, 2 * live)
end
local touched, list = {}, {}
write_leaves(KEYS[2], cap, t.block, first + dead, live, recs, touched, list)
for _, b in ipairs(list) do recompute_block(KEYS[2], KEYS[3], b, t.block, size) end
return live
"""

# KEYS: meta leaf agg of each of the T tables (3·T keys), in the order of the table list
# ARGV: batch_size, refill ('1': replacements for items of a batch already granted: no rate-limiter check, not
# counted as samples), packed uniforms [batch_size], then T names, T counts (summing to batch_size), T shares.
# A table without a rate limiter gives min(count, size); the shortfall goes to the rate-limited tables in the
# ratio of their shares (equally when those are all 0; largest remainder, ties to the earlier table). A
# rate-limited table must grant its whole count or nothing is sampled. Returns {0, reason} when blocked, else
# {1, part_1 .. part_T} with part = {n, size, cursor, capacity, packed(total, wmin), packed keys, packed w} or {0}.
# The payloads are fetched by the client (MGET of the item keys) after this call.
SAMPLE = _PRELUDE + r"""
local T = #KEYS / 3
local B = tonumber(ARGV[1])
local refill = ARGV[2] == '1'
local us = read_doubles(ARGV[3], B)
local tabs, sizes, names, counts, shares = {}, {}, {}, {}, {}
local short = 0
for i = 1, T do
  local t = meta(KEYS[3 * i - 2])
  if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
  tabs[i], sizes[i], names[i] = t, math.min(t.cursor, t.cap), ARGV[3 + i]
  counts[i], shares[i] = tonumber(ARGV[3 + T + i]), tonumber(ARGV[3 + 2 * T + i])
  if t.limited == 0 and counts[i] > sizes[i] then
    short = short + counts[i] - sizes[i]
    counts[i] = sizes[i]
  end
end
if short > 0 then
  local lim, wsum = {}, 0
  for i = 1, T do
    if tabs[i].limited == 1 then lim[#lim + 1] = i; wsum = wsum + shares[i] end
  end
  if #lim == 0 then return {0, 'the tables without a rate limiter hold too few items and no table has one'} end
  local given, rest = 0, {}
  for _, i in ipairs(lim) do
    local x = short / #lim
    if wsum > 0 then x = short * shares[i] / wsum end
    local f = math.floor(x + 1e-9)
    counts[i] = counts[i] + f
    given = given + f
    rest[#rest + 1] = {i, x - f}
  end
  table.sort(rest, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] < b[1] end)
  for j = 1, short - given do counts[rest[j][1]] = counts[rest[j][1]] + 1 end
end
for i = 1, T do
  local t, n, size = tabs[i], counts[i], sizes[i]
  if n > 0 then
    if size == 0 then return {0, names[i] .. ' table is empty'} end
    if t.limited == 1 and not refill then
      if size < t.min_size then
        return {0, names[i] .. ' holds ' .. num(size) .. ' items, min_size_to_sample is ' .. num(t.min_size)}
      end
      if t.cursor * t.spi - t.samples - n < t.min_diff then
        return {0, names[i] .. ' sample/insert ratio: ' .. num(t.samples) .. ' samples after ' .. num(t.cursor) ..
                   ' inserts, samples_per_insert ' .. tostring(t.spi)}
      end
    end
  end
end
-- the block aggregates of a table and their total weight and smallest positive weight
local function read_agg(t, agg, size)
  local nb = math.ceil(size / t.block)
  local a = read_doubles(redis.call('GETRANGE', agg, 0, nb * 24 - 1), 3 * nb)
  local total, wmin = 0, math.huge
  for b = 0, nb - 1 do
    total = total + a[3 * b + 1]
    if a[3 * b + 2] < wmin then wmin = a[3 * b + 2] end
  end
  return a, nb, total, wmin
end
-- every table that supplies items must have something to sample before any is sampled (no
-- counter moves on a refusal); a total of 0 also covers items reserved but not yet published
local aggs = {}
for i = 1, T do
  if counts[i] > 0 then
    local a, nb, total, wmin = read_agg(tabs[i], KEYS[3 * i], sizes[i])
    if not (total > 0) then
      return {0, names[i] .. ' has no item with priority > 0 (items still being written, all quarantined, '
                 .. 'or priorities set to 0; priorities must be |delta| + eps with eps > 0)'}
    end
    aggs[i] = {a, nb, total, wmin}
  end
end
local function sample_table(t, metakey, leaf, ag, n, size, uoff)
  local block = t.block
  local a, nb, total, wmin = ag[1], ag[2], ag[3], ag[4]
  local keys, ws = {}, {}
  local cap, cursor = t.cap, t.cursor
  local b, cum = 0, 0
  local cached, v, filled, j, acc = -1, nil, 0, 1, 0
  for i = 1, n do
    local x = ((i - 1) + us[uoff + i]) / n * total
    while b < nb - 1 and cum + a[3 * b + 1] <= x do cum = cum + a[3 * b + 1]; b = b + 1 end
    if b ~= cached then
      local first = b * block
      filled = math.min(block, size - first)
      v = read_doubles(redis.call('GETRANGE', leaf, first * 16, (first + filled) * 16 - 1), 2 * filled)
      cached, j, acc = b, 1, cum
    end
    while j < filled and (acc + v[2 * j - 1] <= x or v[2 * j - 1] <= 0) do acc = acc + v[2 * j - 1]; j = j + 1 end
    local pick = j
    while pick > 1 and v[2 * pick - 1] <= 0 do pick = pick - 1 end
    local slot
    if v[2 * pick - 1] <= 0 then
      -- rounding put x past the last positive leaf of this block: take the last positive leaf before it
      local bb = b - 1
      while bb >= 0 and not (a[3 * bb + 1] > 0) do bb = bb - 1 end
      if bb < 0 then return nil end
      local f2 = bb * block
      local v2 = read_doubles(redis.call('GETRANGE', leaf, f2 * 16, (f2 + block) * 16 - 1), 2 * block)
      local p2 = block
      while p2 > 1 and v2[2 * p2 - 1] <= 0 do p2 = p2 - 1 end
      slot, ws[i] = f2 + p2 - 1, v2[2 * p2 - 1]
    else
      slot, ws[i] = b * block + pick - 1, v[2 * pick - 1]
    end
    keys[i] = slot + cap * math.floor((cursor - 1 - slot) / cap)  -- the newest key in that slot
  end
  if not refill then redis.call('HINCRBY', metakey, 'samples', n) end
  return {n, num(size), num(cursor), num(cap), struct.pack('<dd', total, wmin), pack_doubles(keys, n),
          pack_doubles(ws, n)}
end
local out = {1}
local uoff = 0
for i = 1, T do
  local n = counts[i]
  if n > 0 then
    local k = 3 * (i - 1)
    local part = sample_table(tabs[i], KEYS[k + 1], KEYS[k + 2], aggs[i], n, sizes[i], uoff)
    if not part then return redis.error_reply('RELAXRL_ZERO_PRIORITY ' .. names[i]) end
    out[i + 1] = part
  else
    out[i + 1] = {0}
  end
  uoff = uoff + n
end
return out
"""

# KEYS: meta leaf agg quarantine ; ARGV: item_prefix, n, key_1 .. key_n (decimal)
# Takes items that failed to decode (or whose payload is missing although they are live) out
# of sampling: priority 0, stored bytes moved to the quarantine hash (kept for inspection),
# decode_errors counts each key once. Keys no longer live are left alone (evicted meanwhile).
# Returns the number of keys newly quarantined.
QUARANTINE = _PRELUDE + r"""
local t = meta(KEYS[1])
if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
local n = tonumber(ARGV[2])
local cap, cursor = t.cap, t.cursor
local touched, list, added = {}, {}, 0
local zero = struct.pack('<dd', 0, 0)
for i = 1, n do
  local field = ARGV[2 + i]
  local key = tonumber(field)
  if key and key >= 0 and key >= cursor - cap and key < cursor then
    local slot = key % cap
    redis.call('SETRANGE', KEYS[2], slot * 16, zero)
    local b = math.floor(slot / t.block)
    if not touched[b] then touched[b] = true; list[#list + 1] = b end
    if redis.call('HEXISTS', KEYS[4], field) == 0 then
      local name = ARGV[1] .. field
      redis.call('HSET', KEYS[4], field, redis.call('GET', name) or '')
      redis.call('DEL', name)
      added = added + 1
    end
  end
end
local size = math.min(cursor, cap)
for _, b in ipairs(list) do recompute_block(KEYS[2], KEYS[3], b, t.block, size) end
if added > 0 then redis.call('HINCRBY', KEYS[1], 'decode_errors', added) end
return added
"""

# KEYS: meta leaf agg ; ARGV: n, packed keys [n], packed priorities [n]
# Sets the priorities of live keys; keys whose slot was overwritten since (or never written) are skipped.
# Returns the number applied.
UPDATE = _PRELUDE + r"""
local t = meta(KEYS[1])
if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
local n = tonumber(ARGV[1])
local keys, pr = read_doubles(ARGV[2], n), read_doubles(ARGV[3], n)
local cap, cursor, block = t.cap, t.cursor, t.block
local lo = cursor - cap
local touched, list, applied = {}, {}, 0
for i = 1, n do
  local key = keys[i]
  if key >= 0 and key >= lo and key < cursor then
    local slot = key % cap
    local p = pr[i]
    redis.call('SETRANGE', KEYS[2], slot * 16, struct.pack('<dd', weight(p, t.alpha), p))
    local b = math.floor(slot / block)
    if not touched[b] then touched[b] = true; list[#list + 1] = b end
    applied = applied + 1
  end
end
local size = math.min(cursor, cap)
for _, b in ipairs(list) do recompute_block(KEYS[2], KEYS[3], b, block, size) end
redis.call('HINCRBY', KEYS[1], 'updates', applied)
if n > applied then redis.call('HINCRBY', KEYS[1], 'stale_updates', n - applied) end
return applied
"""

SCRIPTS = {"create": CREATE, "reserve": RESERVE, "commit": COMMIT, "sample": SAMPLE, "update": UPDATE,
           "quarantine": QUARANTINE}
