-- Take one of `n` permits of a lock (`permits(n)`, n > 1); when all are taken, optionally mark
-- the lock so that the next permit given back is published.
-- KEYS[1] lock key  <prefix>{<name>}: a hash (prelude/permits.lua). '#n' -> n; '#w' -> '1'
--                   while a waiter waits; and per permit, the holder's token -> the server
--                   time (ms) its lease ends.
-- ARGV[1] a fresh owner token: this attempt's alone
-- ARGV[2] lease in milliseconds
-- ARGV[3] '1' to mark the lock when no permit is free (a waiter that subscribed), else '0'
-- ARGV[4] '1' from a client that re-sends: the attempt has a tomb (see acquire.lua)
-- ARGV[5] n
-- Returns 1 when a permit is ours: taken now, or by another copy of this same attempt (whose
-- end it never brings earlier, as acquire.lua). When all n are held, minus the
-- milliseconds until the first of their leases ends (a crashed holder publishes nothing).
-- An error reply 'LOCKPERMITS <m>' when the live holders use m permits, not n (a plain lock:
-- m = 1; shared holds: m = 0): the bound holds only if every holder counts to the same n.
-- The key lives at least as long as its longest permit: a grant or renewal only moves its expiry
-- later (permit_release.lua brings it down to the longest live permit).
local tomb = tomb_of(ARGV[4])
if buried(tomb) then
  return 0
end
-- A refusal leaves the attempt's tomb, when it has one (its last write; see acquire.lua).
local function refused(reply)
  bury(tomb, ARGV[2])
  return reply
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  return refused(redis.error_reply('LOCKPERMITS 1'))
end
local now = now_ms()
local n = tonumber(ARGV[5])
local ttl = tonumber(ARGV[2])
if kind == 'hash' and redis.call('HEXISTS', KEYS[1], '#n') == 0 then
  -- Not one of ours: left as it is.
  return redis.error_reply('WRONGTYPE the lock key holds a hash that is not a lock')
end
local held_n, live, soonest, mine = nil, 0, nil, false
if kind == 'hash' then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local field, value = all[i], all[i + 1]
    if field == '#n' then
      held_n = tonumber(value)
    elseif not is_meta(field) then
      local ends = tonumber(value) or 0
      if ends <= now then
        redis.call('HDEL', KEYS[1], field)
      elseif field == ARGV[1] then
        mine = ends
      else
        live = live + 1
        if soonest == nil or ends < soonest then
          soonest = ends
        end
      end
    end
  end
elseif kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
if held_n and held_n ~= n then
  if live > 0 or mine then
    return refused(redis.error_reply('LOCKPERMITS ' .. held_n))
  end
  -- Nobody holds it: a fresh hash, without the marks of another kind's waiters.
  redis.call('DEL', KEYS[1])
end
if mine or live < n then
  -- Another copy of this attempt granted it already: its end only moves later (the guard may
  -- have extended the permit since; see acquire.lua).
  redis.call('HSET', KEYS[1], ARGV[1], math.max(mine or 0, now + ttl), '#n', n)
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
  end
  return 1
end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], '#w', '1')
end
return refused(-math.max(soonest - now, 1))
