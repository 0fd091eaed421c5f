-- Take a lock and draw its fencing token, atomically.
-- KEYS[1] lock key  <prefix>{<name>}        (value: the owner token)
-- KEYS[2] fence key <prefix>{<name>}:fence  (a counter that never expires)
-- ARGV[1] owner token
-- ARGV[2] lease in milliseconds
-- Returns the new fencing token (>= 1) when the lock is ours. When another owner holds it,
-- returns minus the milliseconds left on their lease (0 if unknown), so a waiter knows the
-- latest moment worth trying again.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- A retry whose first attempt took the lock but lost its reply: the same grant. Nobody else
  -- can have drawn a fencing token since, so the counter still holds ours.
  return tonumber(redis.call('GET', KEYS[2]))
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return -left
end
return 0
