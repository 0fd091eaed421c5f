-- Renew a permit's or a shared hold's lease, but only if it is still ours (`permits(n)`,
-- n > 1, or shared holds: prelude/permits.lua for the hash).
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
local now = now_ms()
if tonumber(ends) <= now then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], now + ttl)
-- The key lives as long as its longest live permit, no longer: an extend
-- to a shorter lease brings it down too, or the hash would outlive every permit and keep a
-- plain lock of the name out while nobody holds it.
local latest = math.max(now + ttl, latest_permit(redis.call('HGETALL', KEYS[1]), now) or 0)
expire_at(KEYS[1], latest)
return 1
