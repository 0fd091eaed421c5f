-- Take a lock and draw its fencing token, atomically.
-- KEYS[1] lock key  <prefix>{<name>}        (value: the owner token)
-- KEYS[2] fence key <prefix>{<name>}:fence  (a counter that never expires)
-- ARGV[1] owner token
-- ARGV[2] lease in milliseconds
-- Returns the new fencing token (>= 1), or 0 when another owner holds the lock.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  -- A retry whose first attempt took the lock but lost its reply: the same grant. Nobody else
  -- can have drawn a fencing token since, so the counter still holds ours.
  return tonumber(redis.call('GET', KEYS[2]))
end
return 0
