-- Give a lock back, but only if we still own it (compare-and-delete).
-- KEYS[1] lock key
-- KEYS[2] its line of fair waiters <prefix>{<name>}:q (see fair.lua), same slot
-- ARGV[1] owner token
-- ARGV[2] milliseconds the key must still live (min_hold); 0 deletes it now
-- ARGV[3] 'SPUBLISH' on a Redis 7 cluster (the message reaches only the key's shard), else
--         'PUBLISH' (or absent)
-- Returns 1 when our lease ended here, 0 when the key had expired or belongs to another owner.
-- A key that a waiter marked (token .. '*', see acquire.lua) is published on the channel named
-- like the key when it is deleted; an unmarked one is not: nobody listens. The message names
-- the first live ticket of the line of fair waiters, if there is one (only that waiter may take
-- the lock now: the others in line need not wake), else it is empty.
local v = redis.call('GET', KEYS[1])
local marked = v == ARGV[1] .. '*'
if v ~= ARGV[1] and not marked then
  return 0
end
local keep = tonumber(ARGV[2])
if keep > 0 then
  -- Never lengthen the lease: only shorten it to the end of the minimum hold. The token is
  -- retired ('~'), so that no extend still in flight can lengthen the key again. Waiters learn
  -- the new end from their next attempt.
  redis.call('SET', KEYS[1], ARGV[1] .. '~', 'KEEPTTL')
  if keep < redis.call('PTTL', KEYS[1]) then
    redis.call('PEXPIRE', KEYS[1], keep)
  end
  return 1
end
redis.call('DEL', KEYS[1])
if marked then
  local next = ''
  if redis.call('EXISTS', KEYS[2]) == 1 then
    local now = redis.call('TIME')
    now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    local first_arrival = nil
    local line = redis.call('HGETALL', KEYS[2])
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
  end
  redis.call(ARGV[3] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH', KEYS[1], next)
end
return 1
