-- Leave the line of a fair lock: an acquisition that stopped waiting gives its ticket back.
-- KEYS[1] queue key  <prefix>{<name>}:q
-- KEYS[2] lock key   <prefix>{<name>}
-- ARGV[1] the acquisition's ticket
-- ARGV[2] 'SPUBLISH' on a Redis 7 cluster, else 'PUBLISH'
-- Returns 1 when the ticket was in line. When the lock is free, the first live ticket left in
-- line is told (on the lock's channel, named in the message, as a release would): it may take
-- the lock now.
local left = redis.call('HDEL', KEYS[1], ARGV[1])
if left == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local next, first_arrival = '', nil
  local line = redis.call('HGETALL', KEYS[1])
  for i = 1, #line, 2 do
    if line[i] ~= '#' then
      local value = line[i + 1]
      local space = string.find(value, ' ', 1, true)
      local arrival = tonumber(string.sub(value, 1, space - 1))
      local expiry = tonumber(string.sub(value, space + 1))
      if expiry >= now and (first_arrival == nil or arrival < first_arrival) then
        next, first_arrival = line[i], arrival
      end
    end
  end
  redis.call(ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH', KEYS[2], next)
end
return left
