"""Tables kept in Redis: their settings, key layout and the Lua scripts that change them.

Vocabulary after Reverb: a table has a name, a ``max_size`` with FIFO removal, a
proportional prioritized sampler (exponent α) and a rate limiter (``min_size_to_sample``,
``samples_per_insert`` with ``error_buffer``).

Redis layout of table ``T`` under namespace ``NS`` (all state lives here, so a restarted
client or server continues where it was)::

    NS:T:meta   hash    settings (layout, capacity, alpha, block, limiter) and counters
                        (cursor = items ever inserted = next key, samples, updates, ...)
    NS:T:leaf   string  16 bytes per slot: float64 w = priority^α, float64 priority
    NS:T:agg    string  24 bytes per block of ``block`` slots: float64 sum w, min positive w, max priority
    NS:T:items  hash    slot -> encoded transition
    NS:T:tok:*  string  idempotency tokens of recent inserts (expire), so a retried insert is not doubled

Keys are int64, increasing from 0; key ``k`` lives in slot ``k % capacity`` and is live
while ``cursor - capacity <= k < cursor``, so an update for an overwritten slot is
recognised as stale without storing keys per slot. The priority index is a two-level
sum tree: block aggregates (a few thousand values, read whole) over leaf runs (read with
one GETRANGE each). Sampling is stratified: the client sends one uniform number per item
(Redis Lua's generator is deterministic), the script walks blocks then leaves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from replay_service.errors import ReplayConfigError

LAYOUT_VERSION = 1
TABLES = ("expert", "online")


def block_size(capacity: int) -> int:
    """Leaves per block: about sqrt(capacity)/4 as a power of two, within [16, 256]."""
    target = max(1.0, math.sqrt(capacity) / 4)
    return int(min(256, max(16, 2 ** round(math.log2(target)))))


@dataclass(frozen=True)
class TableSpec:
    """Settings of one table; built through :meth:`build`, which rejects settings that cannot work."""

    name: str
    max_size: int
    alpha: float
    min_size_to_sample: int
    samples_per_insert: float
    error_buffer: float
    rate_limited: bool

    @property
    def block(self) -> int:
        return block_size(self.max_size)

    @property
    def n_blocks(self) -> int:
        return -(-self.max_size // self.block)

    @property
    def min_diff(self) -> float:
        return self.samples_per_insert * self.min_size_to_sample - self.error_buffer

    @property
    def max_diff(self) -> float:
        return self.samples_per_insert * self.min_size_to_sample + self.error_buffer

    @classmethod
    def build(cls, name: str, max_size: int, alpha: float, min_size_to_sample: int, samples_per_insert: float,
              error_buffer: float, rate_limited: bool = True) -> "TableSpec":
        where = f"replay table '{name}'"
        if int(max_size) < 1:
            raise ReplayConfigError(f"{where}: max_size={max_size}; it must be at least 1")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ReplayConfigError(f"{where}: alpha={alpha}; the priority exponent must be finite and >= 0")
        if min_size_to_sample < 0 or samples_per_insert < 0 or error_buffer < 0:
            raise ReplayConfigError(f"{where}: min_size_to_sample, samples_per_insert and error_buffer must be >= 0")
        if rate_limited and min_size_to_sample > max_size:
            raise ReplayConfigError(
                f"{where}: min_size_to_sample={min_size_to_sample} > max_size={max_size}: the table can never hold "
                "enough items, so sampling would block forever; lower replay.min_size_to_sample or raise the size")
        if rate_limited and samples_per_insert > 0 and 2 * error_buffer < 2 * max(1.0, samples_per_insert):
            raise ReplayConfigError(
                f"{where}: samples_per_insert={samples_per_insert} with error_buffer={error_buffer} would deadlock: "
                "writers wait for samples and the sampler waits for inserts with nothing between them; "
                f"error_buffer must be at least max(1, samples_per_insert) = {max(1.0, samples_per_insert)} "
                "(Reverb's SampleToInsertRatio rule), and at least (batch_size + samples_per_insert)/2 for batched sampling")
        return cls(name, int(max_size), float(alpha), int(min_size_to_sample), float(samples_per_insert),
                   float(error_buffer), bool(rate_limited))

    def check_batch(self, batch_size: int) -> None:
        """Reject a sample batch that the ratio limiter could never grant in one piece."""
        if self.rate_limited and self.samples_per_insert > 0 and 2 * self.error_buffer < batch_size + self.samples_per_insert:
            need = (batch_size + self.samples_per_insert) / 2
            raise ReplayConfigError(
                f"replay table '{self.name}': a batch of {batch_size} can never be granted with "
                f"samples_per_insert={self.samples_per_insert}, error_buffer={self.error_buffer} (writers would block "
                f"before the sampler may take a whole batch); set replay.error_buffer >= {need:g}")

    def keys(self, namespace: str) -> "TableKeys":
        p = f"{namespace}:{self.name}"
        return TableKeys(f"{p}:meta", f"{p}:leaf", f"{p}:agg", f"{p}:items", f"{p}:tok:")


@dataclass(frozen=True)
class TableKeys:
    meta: str
    leaf: str
    agg: str
    items: str
    token_prefix: str


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
           'insert_waits', 0, 'sample_waits', 0)
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SETRANGE', KEYS[2], cap * 16 - 1, '\0')
redis.call('SETRANGE', KEYS[3], math.ceil(cap / block) * 24 - 1, '\0')
return {'created', ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
"""

# KEYS: meta leaf agg items token ; ARGV: n, packed priorities ('' = table's current max), payload_1..n
# Grants as many items as the rate limiter allows now (Reverb CanInsert, item by item),
# writes them FIFO from the cursor and returns {granted, first_key}.
INSERT = _PRELUDE + r"""
local done = redis.call('GET', KEYS[5])
if done then
  local k, first = string.match(done, '^(%d+):(%d+)$')
  return {tonumber(k), first}
end
local t = meta(KEYS[1])
if not t then return redis.error_reply('RELAXRL_NO_TABLE') end
local n = tonumber(ARGV[1])
local cap, cursor = t.cap, t.cursor
local k = n
if t.limited == 1 and t.spi > 0 then
  k = 0
  while k < n do
    local ins = cursor + k + 1
    if math.min(ins, cap) <= t.min_size or ins * t.spi - t.samples <= t.max_diff then k = k + 1 else break end
  end
end
if k == 0 then return {0, num(cursor)} end
local size0 = math.min(cursor, cap)
local pairs_
if ARGV[2] == '' then
  local pmax = 0
  if size0 > 0 then
    local nb = math.ceil(size0 / t.block)
    local a = read_doubles(redis.call('GETRANGE', KEYS[3], 0, nb * 24 - 1), 3 * nb)
    for i = 3, 3 * nb, 3 do if a[i] > pmax then pmax = a[i] end end
  end
  if pmax <= 0 then pmax = 1.0 end
  pairs_ = string.rep(struct.pack('<dd', weight(pmax, t.alpha), pmax), k)
else
  local p = read_doubles(ARGV[2], k)
  local v = {}
  for i = 1, k do v[2 * i - 1] = weight(p[i], t.alpha); v[2 * i] = p[i] end
  pairs_ = pack_doubles(v, 2 * k)
end
-- items 1..skip would be overwritten within this same call (k > capacity): only their keys advance
local skip = math.max(0, k - cap)
local size = math.min(cursor + k, cap)
local touched, list = {}, {}
local i = skip
while i < k do
  local slot = (cursor + i) % cap
  local run = math.min(k - i, cap - slot)
  redis.call('SETRANGE', KEYS[2], slot * 16, string.sub(pairs_, i * 16 + 1, (i + run) * 16))
  for b = math.floor(slot / t.block), math.floor((slot + run - 1) / t.block) do
    if not touched[b] then touched[b] = true; list[#list + 1] = b end
  end
  i = i + run
end
local args, na = {}, 0
for j = skip + 1, k do
  args[na + 1] = num((cursor + j - 1) % cap)
  args[na + 2] = ARGV[2 + j]
  na = na + 2
  if na >= 2000 or j == k then
    redis.call('HSET', KEYS[4], unpack(args, 1, na))
    na = 0
  end
end
for _, b in ipairs(list) do recompute_block(KEYS[2], KEYS[3], b, t.block, size) end
redis.call('HSET', KEYS[1], 'cursor', num(cursor + k))
if KEYS[5] ~= '' then redis.call('SET', KEYS[5], num(k) .. ':' .. num(cursor), 'EX', 3600) end
return {k, num(cursor)}
"""

# KEYS: meta_1 leaf_1 agg_1 items_1 meta_2 leaf_2 agg_2 items_2 (expert, online)
# ARGV: batch_size, expert_wanted, packed uniforms [batch_size]
# Expert supplies min(expert_wanted, its size), online the rest; a rate-limited table must
# grant its whole share or nothing is sampled. Returns {0, reason} when blocked, else
# {1, part_1, part_2} with part = {n, size, cursor, capacity, packed(total, wmin), packed slots, packed w, {payloads}}.
SAMPLE = _PRELUDE + r"""
local B, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local us = read_doubles(ARGV[3], B)
local te, to = meta(KEYS[1]), meta(KEYS[5])
if not te or not to then return redis.error_reply('RELAXRL_NO_TABLE') end
local se, so = math.min(te.cursor, te.cap), math.min(to.cursor, to.cap)
local ne = math.min(want, se)
local counts = {ne, B - ne}
local tabs, sizes, names = {te, to}, {se, so}, {'expert', 'online'}
for i = 1, 2 do
  local t, n, size = tabs[i], counts[i], sizes[i]
  if n > 0 then
    if size == 0 then return {0, names[i] .. ' table is empty'} end
    if t.limited == 1 then
      if size < t.min_size then
        return {0, names[i] .. ' holds ' .. num(size) .. ' items, min_size_to_sample is ' .. num(t.min_size)}
      end
      if t.spi > 0 and t.cursor * t.spi - t.samples - n < t.min_diff then
        return {0, names[i] .. ' sample/insert ratio: ' .. num(t.samples) .. ' samples after ' .. num(t.cursor) ..
                   ' inserts, samples_per_insert ' .. tostring(t.spi)}
      end
    end
  end
end
local function sample_table(t, metakey, leaf, agg, items, n, size, uoff)
  local block = t.block
  local nb = math.ceil(size / block)
  local a = read_doubles(redis.call('GETRANGE', agg, 0, nb * 24 - 1), 3 * nb)
  local total, wmin = 0, math.huge
  for b = 0, nb - 1 do
    total = total + a[3 * b + 1]
    if a[3 * b + 2] < wmin then wmin = a[3 * b + 2] end
  end
  if not (total > 0) then return nil end
  local slots, ws, fields = {}, {}, {}
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
    if v[2 * pick - 1] <= 0 then
      -- rounding put x past the last positive leaf of this block: take the last positive leaf before it
      local bb = b - 1
      while bb >= 0 and not (a[3 * bb + 1] > 0) do bb = bb - 1 end
      if bb < 0 then return nil end
      local f2 = bb * block
      local v2 = read_doubles(redis.call('GETRANGE', leaf, f2 * 16, (f2 + block) * 16 - 1), 2 * block)
      local p2 = block
      while p2 > 1 and v2[2 * p2 - 1] <= 0 do p2 = p2 - 1 end
      slots[i], ws[i] = f2 + p2 - 1, v2[2 * p2 - 1]
    else
      slots[i], ws[i] = b * block + pick - 1, v[2 * pick - 1]
    end
    fields[i] = num(slots[i])
  end
  local payloads = redis.call('HMGET', items, unpack(fields))
  redis.call('HINCRBY', metakey, 'samples', n)
  return {n, num(size), num(t.cursor), num(t.cap), struct.pack('<dd', total, wmin), pack_doubles(slots, n),
          pack_doubles(ws, n), payloads}
end
local out = {1}
local uoff = 0
for i = 1, 2 do
  local n = counts[i]
  if n > 0 then
    local k = 4 * (i - 1)
    local part = sample_table(tabs[i], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], n, sizes[i], uoff)
    if not part then return redis.error_reply('RELAXRL_ZERO_PRIORITY ' .. names[i]) end
    out[i + 1] = part
  else
    out[i + 1] = {0}
  end
  uoff = uoff + n
end
return out
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

SCRIPTS = {"create": CREATE, "insert": INSERT, "sample": SAMPLE, "update": UPDATE}
