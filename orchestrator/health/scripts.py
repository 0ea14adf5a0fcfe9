"""Lua scripts applying the breaker transitions of ``orchestrator.domain.breaker`` atomically.

They mirror ``admit``/``record``/``observe`` line for line (a test runs random sequences
through both and compares). Floats are written with ``%.17g`` so they round-trip exactly.

Keys per backend: ``<prefix>:backend:<name>`` (hash: status, strikes, trips, retry_at,
probe_until, epoch, success_rate, latency_ms), ``<prefix>:slots:<name>`` (sorted set: slot id
-> lease expiry; a slot id ends in ``.<epoch>``, the breaker's epoch at its admission, which
its report brings back) and ``<prefix>:waiters:<name>`` (sorted set: a job waiting for a
slot -> when it was submitted, oldest first). The scripts take the breaker and health hashes
as separate keys; the store passes the same hash for both, so a snapshot reads one hash per
backend.
"""

from __future__ import annotations

# KEYS: breaker, slots. ARGV: now, max_concurrency, lease_s, slot id's random part,
# probe_lease_s -> {allowed 0|1, probe 0|1 or refusal, detail, slot id (admitted)}
ACQUIRE = """
local now = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'status', 'retry_at', 'probe_until', 'epoch')
local status = b[1] or 'closed'
local probe = 0
if status == 'open' then
  if now < (tonumber(b[2]) or 0) then return {0, 'breaker_open', b[2]} end
  probe = 1
elseif status == 'half_open' then
  if now < (tonumber(b[3]) or 0) then return {0, 'probe_in_flight', b[3]} end
  probe = 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[2]) then return {0, 'at_capacity', tostring(n)} end
local slot = ARGV[4] .. '.' .. string.format('%d', tonumber(b[4]) or 0)
redis.call('ZADD', KEYS[2], string.format('%.17g', now + tonumber(ARGV[3])), slot)
if probe == 1 then
  redis.call('HSET', KEYS[1], 'status', 'half_open',
             'probe_until', string.format('%.17g', now + tonumber(ARGV[5])))
end
return {1, tostring(probe), tostring(n + 1), slot}
"""

# KEYS: breaker, health, slots, waiters. ARGV: now, outcome, latency_ms or '', probe 0|1,
# threshold, cooldown_base_s, cooldown_cap_s, alpha, slot_id or '', wake 0|1,
# epoch at admission or '' (unknown: current)
# -> {status, strikes, trips, retry_at, probe_until, epoch, woken waiter or false}
# A released slot with wake '1' pops the longest-waiting job of the backend's waiting list.
# A call admitted before the latest trip (a lower epoch) changes nothing in the breaker.
RECORD = """
local now = tonumber(ARGV[1])
local outcome = ARGV[2]
local probe = ARGV[4] == '1'
local threshold = tonumber(ARGV[5])
local base = tonumber(ARGV[6])
local cap = tonumber(ARGV[7])
local alpha = tonumber(ARGV[8])
local function fmt(x) return string.format('%.17g', x) end
local b = redis.call('HMGET', KEYS[1], 'status', 'strikes', 'trips', 'retry_at', 'probe_until',
                    'epoch')
local status = b[1] or 'closed'
local strikes = tonumber(b[2]) or 0
local trips = tonumber(b[3]) or 0
local retry_at = b[4] or '0'
local probe_until = b[5] or '0'
local epoch = tonumber(b[6]) or 0
local stale = ARGV[11] ~= '' and tonumber(ARGV[11]) < epoch
local function trip()
  trips = trips + 1
  epoch = epoch + 1
  strikes = strikes + 1
  status = 'open'
  retry_at = fmt(now + math.min(cap, base * 2 ^ math.min(trips - 1, 60)))
  probe_until = '0'
end
local function closed()
  status = 'closed'; strikes = 0; trips = 0; retry_at = '0'; probe_until = '0'
end
if stale then
elseif status == 'closed' then
  if outcome == 'success' then
    if strikes ~= 0 then closed() end
  elseif outcome == 'backend_fault' then
    if strikes + 1 >= threshold then trip() else strikes = strikes + 1 end
  end
elseif status == 'half_open' and probe then
  if outcome == 'success' then closed()
  elseif outcome == 'backend_fault' then trip()
  else probe_until = '0' end
end
redis.call('HSET', KEYS[1], 'status', status, 'strikes', strikes, 'trips', trips,
           'retry_at', retry_at, 'probe_until', probe_until,
           'epoch', string.format('%d', epoch))
if outcome == 'success' or outcome == 'backend_fault' then
  local h = redis.call('HMGET', KEYS[2], 'success_rate', 'latency_ms')
  local sample = 0
  if outcome == 'success' then sample = 1 end
  local sr = tonumber(h[1])
  if sr == nil then sr = sample else sr = sr + alpha * (sample - sr) end
  redis.call('HSET', KEYS[2], 'success_rate', fmt(sr))
  local lat = tonumber(ARGV[3])
  if outcome == 'success' and lat ~= nil and lat >= 0 then
    local prev = tonumber(h[2])
    if prev == nil then prev = lat else prev = prev + alpha * (lat - prev) end
    redis.call('HSET', KEYS[2], 'latency_ms', fmt(prev))
  end
end
local woken = false
if ARGV[9] ~= '' and redis.call('ZREM', KEYS[3], ARGV[9]) == 1 and ARGV[10] == '1' then
  local w = redis.call('ZPOPMIN', KEYS[4])
  if w[1] then woken = w[1] end
end
return {status, tostring(strikes), tostring(trips), retry_at, probe_until,
        string.format('%d', epoch), woken}
"""

# KEYS: slots. ARGV: now, slot_id, lease_s -> 1 renewed, 0 already expired or released
RENEW = """
local exp = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[2]))
if exp == nil or exp <= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', string.format('%.17g', tonumber(ARGV[1]) + tonumber(ARGV[3])),
           ARGV[2])
return 1
"""

# KEYS: breaker. ARGV: now, probe_lease_s, the probe's epoch at admission or '' (unknown:
# current) -> 1 half-open (the lease renewed), 0 otherwise (or the probe predates the latest
# trip, so is no longer the probe)
RENEW_PROBE = """
local b = redis.call('HMGET', KEYS[1], 'status', 'epoch')
if b[1] ~= 'half_open' then return 0 end
if ARGV[3] ~= '' and tonumber(ARGV[3]) < (tonumber(b[2]) or 0) then return 0 end
local until_ = tonumber(ARGV[1]) + tonumber(ARGV[2])
if until_ > (tonumber(redis.call('HGET', KEYS[1], 'probe_until')) or 0) then
  redis.call('HSET', KEYS[1], 'probe_until', string.format('%.17g', until_))
end
return 1
"""

# ARGV: now, key prefix, backend names joined by ',' (names are [a-z0-9-]+). Keys are built
# here so the request stays three short arguments whatever the number of backends.
# -> one JSON string: [[status, strikes, trips, retry_at, probe_until, epoch, success_rate,
#    latency_ms, in_flight, waiting], ...] (false where a field is missing): one small reply
#    to parse.
SNAPSHOT = """
local out = {}
local from = '(' .. ARGV[1]
local p = ARGV[2]
for name in string.gmatch(ARGV[3], '[^,]+') do
  local b = redis.call('HMGET', p .. ':backend:' .. name, 'status', 'strikes', 'trips',
                       'retry_at', 'probe_until', 'epoch', 'success_rate', 'latency_ms')
  b[9] = redis.call('ZCOUNT', p .. ':slots:' .. name, from, '+inf')
  b[10] = redis.call('ZCARD', p .. ':waiters:' .. name)
  out[#out + 1] = b
end
return cjson.encode(out)
"""
