-- Leave the line of a fair lock: an acquisition that stopped waiting gives its ticket back.
-- KEYS[1] queue key  <prefix>{<name>}:q
-- ARGV[1] the acquisition's ticket
-- Returns 1 when the ticket was in line.
return redis.call('HDEL', KEYS[1], ARGV[1])
