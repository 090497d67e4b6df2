"""Lua scripts that make the Redis transport's multi-step operations atomic.

Each script runs every check that can fail (ownership, existing record, key types) before its first
write, so an error leaves nothing half-written; Redis runs a script without interleaving other
commands, so no reader sees a partial result. ``#!lua`` (no flags) makes Redis refuse the whole
script up front when it is out of memory, instead of failing between writes. Scripts that add
nothing (they delete, or touch what exists: an expiry, an idle time) say ``flags=allow-oom``, as
their commands alone would be taken then: trimming frees memory, and keeping leases and entries
lets the runs in flight outlast the shortage. All keys of a script share one Cluster slot when
the stream prefix is a hash tag.
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

# KEYS[1] stream; ARGV: maxlen or '', field name, values… One entry {field: value} per value, in
# order; returns their ids. A key of another type fails the first XADD, so nothing is written.
PUBLISH_MANY: Final = """#!lua
local ids = {}
for i = 3, #ARGV do
  if ARGV[1] ~= '' then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], ARGV[i])
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[i])
  end
end
return ids
"""

UNPACK_MAX: Final = 7000
"""The most values a script passes to one command with ``unpack()`` (Redis's Lua stops near 8,000:
"too many results to unpack"); callers with more split them, or take another path."""

# KEYS[1] stream; ARGV: expire ms, maxlen or '', field, value… (at most UNPACK_MAX values)
# Appends one entry and sets the stream's expiry, or, when the key holds another type, does
# neither (a MULTI would still run the PEXPIRE after the XADD failed).
PUBLISH_EXPIRING: Final = (
    "#!lua\n"
    + _CHECK_STREAM
    + """
local err = check_stream(KEYS[1])
if err then return err end
local id
if ARGV[2] ~= '' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return id
"""
)

# KEYS[1] stream; ARGV: group, consumer, idle ms to set, entry ids…
# Resets (or sets) the idle time of the entries this consumer still holds, without counting a new
# delivery; returns the ids it still holds: those XCLAIM gives back (it drops an entry deleted from
# the stream while pending from the pending list, and leaves it out).
# One XCLAIM per 1,000 ids (unpack() has a stack limit).
HOLD: Final = """#!lua flags=allow-oom
local held, kept = {}, {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then held[#held + 1] = ARGV[i] end
end
for first = 1, #held, 1000 do
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for i = first, math.min(first + 999, #held) do args[#args + 1] = held[i] end
  args[#args + 1] = 'IDLE'
  args[#args + 1] = ARGV[3]
  args[#args + 1] = 'JUSTID'
  for _, id in ipairs(redis.call('XCLAIM', unpack(args))) do kept[#kept + 1] = id end
end
return kept
"""

# KEYS[1] stream; ARGV: group, consumer, entry id, the delivery's count (at least 2).
# Takes back one delivery of an entry this consumer holds, if its count is still that: XCLAIM with
# RETRYCOUNT one less (its idle time reset). Returns 1 if so, else 0.
UNCOUNT: Final = """#!lua
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] or p[1][4] ~= tonumber(ARGV[4]) then return 0 end
local kept = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3],
  'RETRYCOUNT', tonumber(ARGV[4]) - 1, 'JUSTID')
return #kept
"""

# KEYS[1] stream; ARGV: group, consumer, min idle ms, start id, count
# XAUTOCLAIM plus each claimed entry's delivery count: {cursor, entries, deleted ids, counts}.
# Not allow-oom, though Redis would take XAUTOCLAIM alone: each reclaim raises a delivery count
# while nothing can run (a lease is a write), so a long shortage would dead-letter requests that
# never ran once it passed; refused, reads wait the shortage out with the counts as they were.
RECLAIM: Final = """#!lua
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
  counts[i] = p[1][4]
end
return {claimed[1], claimed[2], claimed[3] or {}, counts}
"""

_CHUNKED: Final = """
local function chunked(command, head, items)
  -- one call of command (head…, items…) per 1,000 items: unpack() has a stack limit
  for first = 1, #items, 1000 do
    local args = {unpack(head)}
    for i = first, math.min(first + 999, #items) do args[#args + 1] = items[i] end
    redis.call(command, unpack(args))
  end
end
local function exists(keys)
  local count = 0
  for first = 1, #keys, 1000 do
    count = count + redis.call('EXISTS', unpack(keys, first, math.min(first + 999, #keys)))
  end
  return count
end
local function mget(keys)
  local values = {}
  for first = 1, #keys, 1000 do
    local part = redis.call('MGET', unpack(keys, first, math.min(first + 999, #keys)))
    for i = 1, #part do values[#values + 1] = part[i] end
  end
  return values
end
"""

# Completes many requests at once (a BatchScript): reply, record, ack and lease release for each.
# KEYS, 4 per item: request stream, record key, lease key, reply stream (the record key again when
#   the item has no lease or no reply stream).
# ARGV[1]: the reply's field name; then 10 per item: group, entry id, record ttl ms, reply maxlen
#   or '', reply expire ms or '', lease token or '', reply channel or '', the record's JSON up to
#   its reply entry id (which ends it: the script adds it and '"}'), envelope, '1' when the item
#   has a reply stream else ''.
# Per item, in order: {1, reply entry id or ''} when written (the caller knows the rest of the
# record), {0, existing record (JSON)} when the request was already answered (then only acked, and
# its lease released), {-1, ''} when its lease is not held (nothing written, not acked), or
# {-2, message} when a key has the wrong type (nothing written for it, not acked).
# Reads come first — one TYPE per request stream, one MGET of the records and leases, one EXISTS
# of the records — then, per item, XADD (the item's first write: on error nothing is written)
# and SET of the record; last one PEXPIRE per reply stream, one XACK per stream and one DEL.
# Records are JSON strings, so one MGET reads them all; EXISTS tells a record key that holds
# another type (MGET reads it as nil) from a missing one. Arguments are flat and records built
# by the caller: each redis.call and each JSON step costs Redis microseconds on every request.
COMPLETE: Final = (
    "#!lua\n"
    + _CHUNKED
    + """
local field, n, width = ARGV[1], #KEYS / 4, 10
local record_keys, checks, kinds = {}, {}, {}
for i = 1, n do
  record_keys[i] = KEYS[4 * i - 2]
  checks[i] = record_keys[i]
  local stream = KEYS[4 * i - 3]
  if kinds[stream] == nil then kinds[stream] = redis.call('TYPE', stream)['ok'] end
end
for i = 1, n do
  if ARGV[width * i - 3] ~= '' then checks[#checks + 1] = KEYS[4 * i - 1] end
end
local values = mget(checks)
local strings = 0
for i = 1, n do if values[i] then strings = strings + 1 end end
local squatted = {}
if exists(record_keys) > strings then
  for i = 1, n do
    if not values[i] then
      local kind = redis.call('TYPE', record_keys[i])['ok']
      if kind ~= 'none' then squatted[i] = kind end
    end
  end
end
local results, answered, acks, ack_order, releases, expires = {}, {}, {}, {}, {}, {}
local released = {}  -- lease keys an earlier item released: a later item holding the same is not owned
local lease_at = n
for i = 1, n do
  local a = width * (i - 1) + 1
  local stream, record_key, lease_key = KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1]
  local group, token, owned = ARGV[a + 1], ARGV[a + 6], true
  if token ~= '' then
    lease_at = lease_at + 1
    owned = values[lease_at] == token and not released[lease_key]
  end
  local existing = values[i] or answered[record_key]
  local kind, acked = kinds[stream], false
  if kind ~= 'none' and kind ~= 'stream' then
    results[i] = {-2, 'WRONGTYPE key ' .. stream .. ' holds a ' .. kind .. ', not a stream'}
  elseif squatted[i] then
    results[i] = {-2, 'WRONGTYPE key ' .. record_key .. ' holds a ' .. squatted[i] .. ', not a record'}
  elseif existing then
    acked = true
    if token ~= '' and owned then
      releases[#releases + 1] = lease_key
      released[lease_key] = true
    end
    results[i] = {0, existing}
  elseif not owned then
    results[i] = {-1, ''}
  else
    local reply_stream, reply_id = '', ''
    if ARGV[a + 10] ~= '' then
      reply_stream = KEYS[4 * i]
      if ARGV[a + 4] ~= '' then
        reply_id = redis.pcall('XADD', reply_stream, 'MAXLEN', '~', ARGV[a + 4], '*', field, ARGV[a + 9])
      else
        reply_id = redis.pcall('XADD', reply_stream, '*', field, ARGV[a + 9])
      end
    end
    if type(reply_id) == 'table' then
      results[i] = {-2, reply_id['err'] .. ' (reply stream ' .. reply_stream .. ')'}
    else
      if ARGV[a + 5] ~= '' and reply_stream ~= '' then expires[reply_stream] = ARGV[a + 5] end
      local record = ARGV[a + 8] .. reply_id .. '"}'
      redis.call('SET', record_key, record, 'PX', ARGV[a + 3])
      answered[record_key] = record
      acked = true
      if token ~= '' then
        releases[#releases + 1] = lease_key
        released[lease_key] = true
      end
      if ARGV[a + 7] ~= '' then redis.call('PUBLISH', ARGV[a + 7], ARGV[a + 9]) end
      results[i] = {1, reply_id}
    end
  end
  if acked then
    local at = stream .. '\\0' .. group
    if not acks[at] then
      acks[at] = {stream = stream, group = group, ids = {}}
      ack_order[#ack_order + 1] = at
    end
    acks[at].ids[#acks[at].ids + 1] = ARGV[a + 2]
  end
end
for reply_stream, ms in pairs(expires) do redis.call('PEXPIRE', reply_stream, ms) end
for _, at in ipairs(ack_order) do
  chunked('XACK', {acks[at].stream, acks[at].group}, acks[at].ids)
end
if #releases > 0 then chunked('DEL', {}, releases) end
return results
"""
)

# Claims, in the round trip of the read that delivered them, the session leases of the entries a
# blocking XREADGROUP just gave this consumer: sent on the read's connection right behind it, it
# runs as soon as the read is answered. KEYS[1] stream; ARGV: group, consumer, the id after which
# entries are new to the caller, the most entries to claim for, token prefix, lease ttl ms, key
# prefix, data field, then sessions not to claim (the caller's own requests in flight for them
# come first). With more new entries than that, it claims none.
# The new entries are those this consumer holds after that id and got once (XPENDING), read with
# one XRANGE over their span (other consumers' entries in it are skipped). For each one whose data
# is a binary envelope with "session_id" and "id" string members in its JSON body: SET NX of the
# session's lease (token: prefix, entry id, '/', request id); then one MGET of every lease, record
# and cancel flag key. Returns {{{entry id, session id, request id, token}…}, values}. Others are
# left to the caller, who claims them the usual way.
# The ids are found by plain finds, not by decoding the JSON (several times cheaper in Redis):
# only strings without escapes or control characters, and the first member of each name, which
# the caller checks against the decoded request (a nested "id" first, say, is given back). The
# script names the lease, record and cancel flag keys itself (they are known only from the
# entries): with a hash-tagged prefix they share the stream's Cluster slot.
CLAIM_READ: Final = (
    "#!lua\n"
    + _CHUNKED
    + """
local function member(data, name, from)
  local _, colon = string.find(data, '"' .. name .. '":', from, true)
  return colon and string.match(data, '^%s*"([^"\\\\%c]+)"', colon + 1)
end
local function request_of(data)
  if not data or string.sub(data, 1, 8) ~= '\\137BIN\\r\\n\\026\\n' then return nil end
  local ok, version, _, data_start = pcall(struct.unpack, '>HII', data, 9)
  if not ok or version ~= 1 or data_start >= #data then return nil end
  local session, request = member(data, 'session_id', data_start + 1), member(data, 'id', data_start + 1)
  if session and request then return session, request end
end
local group, consumer, prefix, field = ARGV[1], ARGV[2], ARGV[7], ARGV[8]
local most = tonumber(ARGV[4])
local pending = redis.call('XPENDING', KEYS[1], group, '(' .. ARGV[3], '+', most + 1, consumer)
if #pending > most then return {{}, {}} end
local skip = {}
for i = 9, #ARGV do skip[ARGV[i]] = true end
local new, first, last = {}, nil, nil
for _, p in ipairs(pending) do
  if p[4] == 1 then
    new[p[1]] = true
    first, last = first or p[1], p[1]
  end
end
if not first then return {{}, {}} end
local claimed, checks = {}, {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], first, last)) do
  local id, fields, data = entry[1], entry[2], nil
  if new[id] then
    for i = 1, #fields, 2 do
      if fields[i] == field then data = fields[i + 1] break end
    end
  end
  local session, request = request_of(data)
  if session and not skip[session] then
    local lease, token = prefix .. ':lease:' .. session, ARGV[5] .. id .. '/' .. request
    redis.call('SET', lease, token, 'NX', 'PX', ARGV[6])
    claimed[#claimed + 1] = {id, session, request, token}
    checks[#checks + 1] = lease
    checks[#checks + 1] = prefix .. ':completed:' .. request
    checks[#checks + 1] = prefix .. ':cancel:' .. request
  end
end
if #claimed == 0 then return {{}, {}} end
return {claimed, mget(checks)}
"""
)

# KEYS: stream, dead-letter stream, record key (or the dead-letter stream again), the call's marker
#       key[, reply stream]
# ARGV: group, entry id, consumer, n dead-letter pairs, reply maxlen or '', reply expire ms or '',
#       check record ('1' or '0'), reply channel or '', channel payload, marker ttl ms,
#       record ttl ms or '' (write no record), the record up to its reply entry id,
#       n dead-letter field/value pairs…, reply field/value pairs…
# Returns {1, dead-letter id}, {0, 'not-held'} (also when the group is gone) or {0, 'answered'} (then
# the entry is only acked). The marker (a key naming this call, set to the dead-letter id for a
# while) lets a retry of a call whose reply was lost, which finds the entry no longer held, report
# what its first attempt wrote. With a record ttl, the request's completed-request record is written
# as COMPLETE writes it (naming the reply entry, if any).
DEAD_LETTER: Final = (
    "#!lua\n"
    + _CHECK_STREAM
    + """
local err = check_stream(KEYS[1])
if err then return err end
-- no such group (the data was lost: flushed, restarted): nobody holds the entry
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if p['err'] or #p == 0 or p[1][2] ~= ARGV[3] then
  local done = redis.call('GET', KEYS[4])
  if done then return {1, done} end
  return {0, 'not-held'}
end
if ARGV[7] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return {0, 'answered'}
end
err = check_stream(KEYS[2])
if err then return err end
if KEYS[5] then
  err = check_stream(KEYS[5])
  if err then return err end
end
local last = 12 + 2 * tonumber(ARGV[4])
local dead_id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 13, last))
local reply_id = ''
if KEYS[5] then
  if ARGV[5] ~= '' then
    reply_id = redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, last + 1))
  else
    reply_id = redis.call('XADD', KEYS[5], '*', unpack(ARGV, last + 1))
  end
  if ARGV[6] ~= '' then redis.call('PEXPIRE', KEYS[5], ARGV[6]) end
end
if ARGV[11] ~= '' then redis.call('SET', KEYS[3], ARGV[12] .. reply_id .. '"}', 'PX', ARGV[11]) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[4], dead_id, 'PX', ARGV[10])
if ARGV[8] ~= '' then redis.call('PUBLISH', ARGV[8], ARGV[9]) end
return {1, dead_id}
"""
)

# KEYS[1] a completed-request record key; ARGV[1] a response id. Deletes the record if it names that
# response (a record that is not a JSON object names none); returns 1 if deleted, else 0.
DELETE_RECORD: Final = """#!lua flags=allow-oom
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
local ok, record = pcall(cjson.decode, stored)
if not ok or type(record) ~= 'table' or record['response_id'] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""

# KEYS[1] source stream, KEYS[2] destination stream, KEYS[3] the call's marker key; ARGV: entry
# id, marker ttl ms, then field, value…
# Appends the fields to the destination as a new entry, deletes the entry from the source and
# sets the marker to the new id for a while; or, when the source no longer has the entry, does
# nothing and returns the marker's id (what the first attempt of a call whose reply was lost
# wrote) or nil.
MOVE: Final = (
    "#!lua\n"
    + _CHECK_STREAM
    + """
local err = check_stream(KEYS[1]) or check_stream(KEYS[2])
if err then return err end
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then return redis.call('GET', KEYS[3]) end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], id, 'PX', ARGV[2])
return id
"""
)

# KEYS[1] stream. The id an XADD '*' would give its next entry now (its last generated id counts,
# even when that entry was deleted): for writes that must know it before they run (a MULTI).
NEXT_ID: Final = """#!lua
local ms, seq = 0, -1
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local m, s = string.match(info[i + 1], '^(%d+)-(%d+)$')
      ms, seq = tonumber(m), tonumber(s)
    end
  end
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms > ms then return string.format('%d-0', now_ms) end
return string.format('%d-%d', ms, seq + 1)
"""

# KEYS[1] stream. XTRIM MINID below every group's oldest pending or undelivered entry.
TRIM_ACKNOWLEDGED: Final = """#!lua flags=allow-oom
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

# KEYS[1] lease key; ARGV: token, ttl ms. Renew only for the owner.
RENEW_LEASE: Final = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] lease key; ARGV: token. Release only for the owner.
RELEASE_LEASE: Final = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
