-- Give a permit or a shared hold back, but only if it is still ours (`permits(n)`, n > 1, or
-- shared holds: prelude/permits.lua for the hash).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] milliseconds the permit must still be held (min_hold); 0 gives it back now
-- ARGV[3] 'SPUBLISH' on a Redis 7 cluster, else 'PUBLISH'
-- ARGV[4] '1' from a client that re-sends: leave the tomb of the attempt that took this
--         permit, until the permit would have ended (see release.lua)
-- Returns 1 when our lease ended here, 0 when it had expired or is not there.
-- When a waiter marked the lock ('#w'), the freed permit is published on the channel named
-- like the key (an empty message: every waiter may take it) and the mark is cleared; waiters
-- still refused mark it again. Shared holds free nobody but with the last of them, which alone
-- is published (a writer waiting on them marked the lock). The key's expiry is brought down to
-- the end of the longest live permit left, and the last permit out deletes it.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return 0
end
local ends = redis.call('HGET', KEYS[1], ARGV[1])
if not ends then
  return 0
end
local now = now_ms()
redis.call('HDEL', KEYS[1], ARGV[1])
if tonumber(ends) <= now then
  return 0
end
bury(tomb_of(ARGV[4]), tonumber(ends) - now)
local keep = tonumber(ARGV[2])
if keep > 0 then
  -- Held on until the end of the minimum hold (never longer), under a retired token ('~') that
  -- no extend still in flight can find.
  redis.call('HSET', KEYS[1], ARGV[1] .. '~', math.min(tonumber(ends), now + keep))
end
local all = redis.call('HGETALL', KEYS[1])
if keep == 0 then
  local shared = redis.call('HGET', KEYS[1], '#n') == '0'
  if (not shared or not latest_permit(all, now)) and redis.call('HDEL', KEYS[1], '#w') == 1 then
    redis.call(ARGV[3] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH', KEYS[1], '')
  end
end
-- The key lives as long as its longest live permit, no longer: a lock whose holders are all
-- gone is free at once for a request of any kind.
local latest = latest_permit(all, now)
if latest == nil then
  redis.call('DEL', KEYS[1])
else
  expire_at(KEYS[1], latest)
end
return 1
