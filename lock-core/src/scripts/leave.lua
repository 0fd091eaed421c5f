-- Leave the line of a fair lock, and the writers' claims (prelude/claims.lua): an acquisition
-- that stopped waiting gives its ticket or claim back.
-- KEYS[1] queue key  <prefix>{<name>}:q
-- KEYS[2] lock key   <prefix>{<name>}
-- ARGV[1] the acquisition's ticket (a fair one's) or claim id (a waiting writer's)
-- ARGV[2] 'SPUBLISH' on a Redis 7 cluster, else 'PUBLISH'
-- ARGV[3] '1' from a client that re-sends: the ended claim is kept as ended (claims.lua)
-- Returns 1 when the ticket was in line. If it was first, the first live ticket left in line is
-- told: named in the holder's marked value (fair.lua), so that the release wakes it; or, when
-- the lock is free, on the lock's channel (as a release would): it may take the lock now.
-- When the last live claim ends and shared requests wait on the claims, they are told on the
-- lock's channel (an empty message) that they may try again.
local publish = ARGV[2] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'
local now = now_ms()
local claims = KEYS[2] .. ':x'
if redis.pcall('HEXISTS', claims, ARGV[1]) == 1 then
  if ARGV[3] == '1' then
    -- The ended claim's marker (prelude/claims.lua) stays as long as the claims key would.
    local kept = redis.pcall('PTTL', claims)
    redis.pcall('HSET', claims, ARGV[1], -(now + math.max(tonumber(kept) or 0, 1)))
  else
    redis.pcall('HDEL', claims, ARGV[1])
  end
  if redis.pcall('HEXISTS', claims, '#w') == 1 and not first_claim(claims, now) then
    redis.pcall('HDEL', claims, '#w')
    redis.call(publish, KEYS[2], '')
  end
end
local left = redis.call('HDEL', KEYS[1], ARGV[1])
if left == 0 then
  return 0
end
local holder = redis.pcall('GET', KEYS[2])
if type(holder) == 'table' then
  -- Not a string (a lock of permits(n), or another client's key): no fair holder to pass the
  -- line on to, and nobody in line may take it now.
  return 1
end
local star = holder and string.find(holder, '*', 1, true)
if holder and not (star and string.sub(holder, star + 1) == ARGV[1]) then
  return 1
end
local first, first_arrival = '', nil
local line = redis.call('HGETALL', KEYS[1])
for i = 1, #line, 2 do
  if line[i] ~= '#' then
    local value = line[i + 1]
    local space = string.find(value, ' ', 1, true)
    local arrival = tonumber(string.sub(value, 1, space - 1))
    local expiry = tonumber(string.sub(value, space + 1))
    if expiry >= now and (first_arrival == nil or arrival < first_arrival) then
      first, first_arrival = line[i], arrival
    end
  end
end
if holder then
  redis.call('SET', KEYS[2], string.sub(holder, 1, star) .. first, 'KEEPTTL')
else
  redis.call(publish, KEYS[2], first)
end
return 1
