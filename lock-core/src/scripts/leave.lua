-- Leave the line of a fair lock: an acquisition that stopped waiting gives its ticket back.
-- KEYS[1] queue key  <prefix>{<name>}:q
-- KEYS[2] lock key   <prefix>{<name>}
-- ARGV[1] the acquisition's ticket
-- ARGV[2] 'SPUBLISH' on a Redis 7 cluster, else 'PUBLISH'
-- Returns 1 when the ticket was in line. When the lock is free, the waiters behind the ticket
-- are told (on the lock's channel, as a release would): the next one may take it now.
local left = redis.call('HDEL', KEYS[1], ARGV[1])
if left == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call(ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH', KEYS[2], '')
end
return left
