-- Draw a fencing token, but only while we hold the lock.
-- KEYS[1] lock key   <prefix>{<name>}
-- KEYS[2] fence key  <prefix>{<name>}:fence
-- ARGV[1] owner token
-- ARGV[2] how long the fence key outlives its last use, in milliseconds
-- Returns the token (>= 1), or 0 when the key had expired or belongs to another owner.
-- The token is the larger of the last token + 1 and the server's clock in microseconds
-- (prelude/fence.lua).
if not ours(KEYS[1], ARGV[1]) then
  return 0
end
return next_fence(KEYS[2], ARGV[2])
