"""Lua scripts that make the Redis transport's multi-step operations atomic.

Each script runs every check that can fail (ownership, existing record, key types) before its first
write, so an error leaves nothing half-written; Redis runs a script without interleaving other
commands, so no reader sees a partial result. ``#!lua`` (no flags) makes Redis refuse the whole
script up front when it is out of memory, instead of failing between writes. All keys of a script
share one Cluster slot when the stream prefix is a hash tag.
"""

from typing import Final

_CHECK_STREAM: Final = """
local function check_stream(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= 'stream' then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind .. ', not a stream')
  end
end
"""

# KEYS[1] stream; ARGV: group, consumer, idle ms to set, entry ids…
# Resets (or sets) the idle time of the entries this consumer still holds, without counting a new
# delivery; returns the ids it still holds.
HOLD: Final = """#!lua
local held = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then held[#held + 1] = ARGV[i] end
end
if #held > 0 then
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(held) do args[#args + 1] = id end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[3]
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return held
"""

# KEYS[1] stream; ARGV: group, consumer, min idle ms, start id, count
# XAUTOCLAIM plus each claimed entry's delivery count: {cursor, entries, deleted ids, counts}.
RECLAIM: Final = """#!lua
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  counts[i] = p[1][4]
end
return {claimed[1], claimed[2], claimed[3] or {}, counts}
"""

# KEYS: request stream, record key, lease key (or the record key again)[, reply stream]
# ARGV: group, entry id, record ttl ms, reply maxlen or '', reply expire ms or '', completed_at,
#       request id, response id, status, reply channel or '', channel payload, lease token or '',
#       reply field/value pairs…
# With a lease token, writes only while KEYS[3] holds it, and deletes it after the ack.
# Returns {1, reply entry id or ''} when written (the caller knows the rest of the record),
# {0, existing record} when the request was already answered,
# {-1, {}} when the lease is not held (nothing written, not acked).
COMPLETE: Final = (
    "#!lua\n"
    + _CHECK_STREAM
    + """
local err = check_stream(KEYS[1])
if err then return err end
local leased = ARGV[12] ~= ''
local owned = not leased or redis.call('GET', KEYS[3]) == ARGV[12]
local existing = redis.call('HGETALL', KEYS[2])
if #existing > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  if leased and owned then redis.call('DEL', KEYS[3]) end
  return {0, existing}
end
if not owned then return {-1, {}} end
local reply_stream, reply_id = KEYS[4] or '', ''
if KEYS[4] then
  err = check_stream(KEYS[4])
  if err then return err end
  if ARGV[4] ~= '' then
    reply_id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 13))
  else
    reply_id = redis.call('XADD', KEYS[4], '*', unpack(ARGV, 13))
  end
  if ARGV[5] ~= '' then redis.call('PEXPIRE', KEYS[4], ARGV[5]) end
end
local record = {'request_id', ARGV[7], 'response_id', ARGV[8], 'status', ARGV[9],
                'reply_stream', reply_stream, 'reply_entry_id', reply_id, 'completed_at', ARGV[6]}
redis.call('HSET', KEYS[2], unpack(record))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if leased then redis.call('DEL', KEYS[3]) end
if ARGV[10] ~= '' then redis.call('PUBLISH', ARGV[10], ARGV[11]) end
return {1, reply_id}
"""
)

# KEYS: stream, dead-letter stream, record key (or the dead-letter stream again)[, reply stream]
# ARGV: group, entry id, consumer, n dead-letter pairs, reply maxlen or '', reply expire ms or '',
#       check record ('1' or '0'), reply channel or '', channel payload,
#       n dead-letter field/value pairs…, reply field/value pairs…
# Returns {1, dead-letter id}, {0, 'not-held'} or {0, 'answered'} (then the entry is only acked).
DEAD_LETTER: Final = (
    "#!lua\n"
    + _CHECK_STREAM
    + """
local err = check_stream(KEYS[1])
if err then return err end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return {0, 'not-held'} end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return {0, 'answered'}
end
err = check_stream(KEYS[2])
if err then return err end
if KEYS[4] then
  err = check_stream(KEYS[4])
  if err then return err end
end
local last = 9 + 2 * tonumber(ARGV[4])
local dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 10, last))
if KEYS[4] then
  if ARGV[5] ~= '' then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, last + 1))
  else
    redis.call('XADD', KEYS[4], '*', unpack(ARGV, last + 1))
  end
  if ARGV[6] ~= '' then redis.call('PEXPIRE', KEYS[4], ARGV[6]) end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {1, dead_id}
"""
)

# KEYS[1] stream. XTRIM MINID below every group's oldest pending or undelivered entry.
TRIM_ACKNOWLEDGED: Final = """#!lua
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a_ms, a_seq, b_ms, b_seq)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local min_ms, min_seq
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local ms, seq = parse(info['last-delivered-id'])
  seq = seq + 1
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    local p_ms, p_seq = parse(summary[2])
    if less(p_ms, p_seq, ms, seq) then ms, seq = p_ms, p_seq end
  end
  if min_ms == nil or less(ms, seq, min_ms, min_seq) then min_ms, min_seq = ms, seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', min_ms, min_seq))
"""

# KEYS: lease key, n record keys, n cancel flag keys; ARGV: token, ttl ms, n
# Before a run, in one step: {'answered', indexes} if any request has a record, else
# {'cancelled', indexes} if any has a cancellation request, else SET NX the lease: {'leased'|'busy'}.
CLAIM: Final = """#!lua
local n = tonumber(ARGV[3])
local found = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + i]) == 1 then found[#found + 1] = i end
end
if #found > 0 then return {'answered', found} end
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + n + i]) == 1 then found[#found + 1] = i end
end
if #found > 0 then return {'cancelled', found} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'leased', {}} end
return {'busy', {}}
"""

# KEYS[1] lease key; ARGV: token, ttl ms. Renew only for the owner.
RENEW_LEASE: Final = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lease key; ARGV: token. Release only for the owner.
RELEASE_LEASE: Final = """#!lua
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] record key; ARGV: ttl ms, field/value pairs… Store unless a record exists.
SET_RECORD: Final = """#!lua
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""
