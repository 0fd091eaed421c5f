-- Draw a fencing token, but only while we hold the lock.
-- KEYS[1] lock key   <prefix>{<name>}
-- KEYS[2] fence key  <prefix>{<name>}:fence
-- ARGV[1] owner token
-- ARGV[2] how long the fence key outlives its last use, in milliseconds
-- Returns the token (>= 1), or 0 when the key had expired or belongs to another owner.
--
-- The token is the larger of the last token + 1 and the server's clock in microseconds. While
-- the counter lives, tokens grow by it; once it has expired (ARGV[2] after its last use) or was
-- lost with the server's data, the clock still puts every new token above every earlier one.
-- Tokens stay below 2^53, so Lua's numbers hold them exactly.
-- Ours: the token, or the token marked by a waiter ('*', then maybe a fair ticket).
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  -- Not a string: the key of a lock of permits(n) (permit_acquire.lua), so not ours.
  return 0
end
if v ~= ARGV[1] and (not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '*') then
  return 0
end
local now = redis.call('TIME')
local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if last and last >= token then
  token = last + 1
end
redis.call('SET', KEYS[2], string.format('%.0f', token), 'PX', ARGV[2])
return token
