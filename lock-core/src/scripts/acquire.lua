-- Take a lock; when another owner holds it, optionally mark it so its release is published.
-- KEYS[1] lock key  <prefix>{<name>}   (value: the holder's token, plus '*' once a waiter waits,
--                                       then the first fair ticket in line, if any: fair.lua)
-- ARGV[1] a fresh owner token: this attempt's alone
-- ARGV[2] lease in milliseconds
-- ARGV[3] '1' to mark a held key (a waiter that subscribed to the key's channel), else '0';
--         only a holder in lock-core's token format is marked
-- ARGV[4] '1' from a client that re-sends by itself (the cluster client; Sentinel after a
--         failover), else absent: the attempt has a tomb (prelude/tomb.lua)
-- ARGV[5] a waiting acquisition's claim id (the same for all its attempts), and
-- ARGV[6] how long its claim lasts without another attempt, in ms; both absent when it does
--         not wait. A refused attempt that marks (ARGV[3]) records its claim, which keeps new
--         shared holds out until the claim is taken out by its grant or lapses (claims.lua).
-- Returns 1 when the lock is ours: set now, or by another copy of this same attempt (a
-- client that re-sends after an I/O error, as the cluster client does; the token is this
-- attempt's, so the lease still runs from this attempt's send). A copy never shortens the
-- key's expiry. When another owner holds it,
-- returns minus the milliseconds left on their lease (0 if unknown), so a waiter knows the
-- latest moment worth trying again.
-- The uncontended acquire on one server is a plain SET NX PX instead of this script, and the
-- uncontended release publishes nothing.
local tomb = tomb_of(ARGV[4])
if buried(tomb) then
  return 0
end
-- A grant takes this acquisition's claim out; when shared requests waited on the claims, the
-- lock is taken marked, so that its release wakes them.
local function granted()
  if unclaim(ARGV[5], now_ms(), tonumber(ARGV[6] or '0'), ARGV[4]) then
    redis.call('SET', KEYS[1], ARGV[1] .. '*', 'KEEPTTL')
  end
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return granted()
end
-- A refusal leaves the attempt's tomb, when it has one: the last write, and one that may fail
-- (a server out of memory still answers the refusal).
local function refused(reply)
  if ARGV[3] == '1' and type(reply) == 'number' then
    claim(ARGV[5], now_ms(), tonumber(ARGV[6]))
  end
  bury(tomb, ARGV[2])
  return reply
end
local holder = redis.pcall('GET', KEYS[1])
if type(holder) == 'table' then
  -- Not a string: a hash is the key of a lock whose holders share it (permits(n), or shared
  -- holds; prelude/writer.lua). Refused while one of them is live, whatever this request's
  -- mark (a waiting writer's claim keeps new shared holds out meanwhile); taken over once none
  -- is. Any other type is not a lock: left as it is.
  local may, reply = writer_meets_hash(KEYS[1], now_ms(), ARGV[3] == '1')
  if may == 'error' then
    return reply
  elseif may == 'refuse' then
    return refused(reply)
  end
  -- Marked at once when a waiter asked to be told.
  redis.call('SET', KEYS[1], ARGV[1] .. (reply and '*' or ''), 'PX', ARGV[2])
  return granted()
end
if holder == ARGV[1] or string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. '*' then
  -- A write of our own, after the first copy's: a `WAIT` that follows on this connection
  -- (min_replicas) then covers the grant too (replication is ordered). The expiry only moves
  -- later: this copy may land after the guard extended its lease (a cluster client's re-send
  -- whose first copy arrives late), and cutting that lease back to this attempt's ttl would let
  -- another owner in while the guard still counts on it. The lease is still dated from this
  -- attempt's send. (`<=`: in the millisecond of the grant the key's PTTL still equals the
  -- lease, and the two branches must not differ by when in that millisecond a copy lands:
  -- under a full memory, only PEXPIRE may be a script's first write, SET is refused.)
  if redis.call('PTTL', KEYS[1]) <= tonumber(ARGV[2]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], holder, 'KEEPTTL')
  end
  return 1
end
if ARGV[3] == '1' and not string.find(holder, '*', 1, true) and is_token(holder) then
  redis.call('SET', KEYS[1], holder .. '*', 'KEEPTTL')
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return refused(-left)
end
return refused(0)
