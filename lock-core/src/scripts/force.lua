-- Free a lock whoever holds it (an operator's force-release), advance its fencing counter so
-- that the evicted holder's fenced writes are refused, and wake its waiters.
-- KEYS[1] lock key   <prefix>{<name>}
-- KEYS[2] fence key  <prefix>{<name>}:fence
-- ARGV[1] how long the fence key outlives its last use, in milliseconds (as fence.lua)
-- ARGV[2] 'PUBLISH', or 'SPUBLISH' on a Redis 7 cluster
-- Returns the evicted value (the holder's token, maybe marked; for a lock of permits(n), the
-- token of one of its live holders: every one is evicted), or false when it was free.
-- The fencing counter moves as fence.lua would move it for a new holder (prelude/fence.lua),
-- so every token drawn before this one, including the evicted holder's, is below it.
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  -- A hash: a lock of permits(n) or of shared holds (prelude/permits.lua); all its holders go.
  -- Anything else
  -- (another type, a hash without '#n') is not a lock: left as it is.
  local kind = redis.call('TYPE', KEYS[1]).ok
  if kind ~= 'hash' or redis.call('HEXISTS', KEYS[1], '#n') == 0 then
    return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ' that is not a lock')
  end
  local now = now_ms()
  local all = redis.call('HGETALL', KEYS[1])
  v = false
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if not is_meta(all[i]) and ends and ends > now then
      v = all[i]
      break
    end
  end
end
if not v then
  return false
end
redis.call('DEL', KEYS[1])
next_fence(KEYS[2], ARGV[1])
-- An empty message wakes every waiter, fair ones included.
redis.call(ARGV[2], KEYS[1], '')
return v
