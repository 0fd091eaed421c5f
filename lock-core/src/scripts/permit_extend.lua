-- Renew a permit's lease, but only if it is still ours (`permits(n)`, n > 1; see
-- permit_acquire.lua for the hash).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] new lease in milliseconds, counted from now
-- Returns 1 when renewed, 0 when it had expired or is not there.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return 0
end
local ends = redis.call('HGET', KEYS[1], ARGV[1])
if not ends then
  return 0
end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if tonumber(ends) <= now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], now + ttl)
if redis.call('PTTL', KEYS[1]) < ttl then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
