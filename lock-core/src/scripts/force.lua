-- Free a lock whoever holds it (an operator's force-release), or only the holds of one holder;
-- advance its fencing counter so that the evicted holders' fenced writes are refused; leave a
-- record where each evicted holder finds it; and wake its waiters.
-- KEYS[1] lock key   <prefix>{<name>}
-- KEYS[2] fence key  <prefix>{<name>}:fence
-- ARGV[1] how long the fence key outlives its last use, in milliseconds (as fence.lua)
-- ARGV[2] 'PUBLISH', or 'SPUBLISH' on a Redis 7 cluster
-- ARGV[3] who evicts (an operator's words, kept in the records)
-- ARGV[4] a holder id: only holds taken by that holder are evicted; '' evicts every hold
-- ARGV[5] how long each record lives, in milliseconds
-- Returns the evicted values, one per hold (a lock's token, maybe marked; for a lock of
-- permits(n) or of shared holds, each evicted holder's token), or an empty array when nothing
-- was evicted (the lock was free, or no hold was the holder's). A hold already released and
-- kept only for its minimum hold (a retired token, '~') is freed too, but is nobody's.
-- The fencing counter moves as fence.lua would move it for a new holder (prelude/fence.lua),
-- so every token drawn before this one, including the evicted holders', is below it.
-- Each evicted hold's record, <lock key>:evicted:<token> -> '<who>|<server ms>', shares the
-- lock's slot but is not declared in KEYS (as the tombs, prelude/tomb.lua), and is written
-- with pcall after the lock's own change: a server out of memory still evicts. The evicted
-- holder reads it when it finds its lease gone, to say who took it.
local function holder_of(value)
  return string.match(value, '^([^|]*)|')
end
local function wanted(token)
  return ARGV[4] == '' or holder_of(token) == ARGV[4]
end
-- A hold already given back, kept only until its minimum hold ends (release.lua retires its
-- token with '~'): freed with the rest, but nobody's to evict.
local function retired(value)
  return string.sub(value, -1) == '~'
end
local now = now_ms()
local evicted = {}
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  -- A hash: a lock of permits(n) or of shared holds (prelude/permits.lua). Anything else
  -- (another type, a hash without '#n') is not a lock: left as it is.
  local kind = redis.call('TYPE', KEYS[1]).ok
  if kind ~= 'hash' or redis.call('HEXISTS', KEYS[1], '#n') == 0 then
    return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ' that is not a lock')
  end
  local all = redis.call('HGETALL', KEYS[1])
  -- The holds that go (retired ones among them, listed as nobody's), the holds that stay,
  -- and the latest end among those.
  local gone, kept, latest = {}, 0, nil
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if not is_meta(all[i]) and ends and ends > now then
      if wanted(all[i]) then
        gone[#gone + 1] = all[i]
        if not retired(all[i]) then
          evicted[#evicted + 1] = all[i]
        end
      else
        kept = kept + 1
        if not latest or ends > latest then
          latest = ends
        end
      end
    end
  end
  if #gone == 0 then
    return evicted
  end
  if kept == 0 then
    redis.call('DEL', KEYS[1])
  else
    for _, token in ipairs(gone) do
      redis.call('HDEL', KEYS[1], token)
    end
    -- The hash lives as long as its latest hold left, not an evicted one's: a plain SET NX
    -- must find the name free once the others are gone.
    expire_at(KEYS[1], latest)
  end
elseif v then
  if not wanted(v) then
    return evicted
  end
  if retired(v) then
    -- Released already, kept for its minimum hold: freed now, and nobody was evicted.
    redis.call('DEL', KEYS[1])
    redis.call(ARGV[2], KEYS[1], '')
    return evicted
  end
  evicted[1] = v
  redis.call('DEL', KEYS[1])
else
  return evicted
end
if #evicted > 0 then
  next_fence(KEYS[2], ARGV[1])
end
for _, value in ipairs(evicted) do
  -- The token without a waiter's mark ('*...') or a retired lease's '~' (release.lua).
  local token = string.match(value, '^([^|]*|%d+|%d+w?|%x+)')
    or string.match(value, '^([^|]*|%d+|%x+)') or value
  redis.pcall('SET', KEYS[1] .. ':evicted:' .. token, ARGV[3] .. '|' .. now, 'PX', ARGV[5])
end
-- An empty message wakes every waiter, fair ones included.
redis.call(ARGV[2], KEYS[1], '')
return evicted
