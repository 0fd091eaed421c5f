-- Take a shared (read) hold of a lock: any number of shared holders at once, each on its own
-- lease, and none while a writer (an exclusive or fair acquisition: acquire.lua, fair.lua)
-- holds the lock or waits for it (its claim, prelude/claims.lua).
-- KEYS[1] lock key  <prefix>{<name>}: while shared holders hold it, a hash (prelude/permits.lua)
--                   with '#n' -> 0 (no bound), '#w' -> '1' while a waiter asks for releases to be
--                   published, and per holder, its token -> the server time (ms) its lease ends.
--                   While a writer holds it, the writer's string (acquire.lua).
-- ARGV[1] a fresh owner token: this attempt's alone
-- ARGV[2] lease in milliseconds
-- ARGV[3] '1' to mark the lock when refused (a waiter that subscribed), else '0'
-- ARGV[4] '1' from a client that re-sends: the attempt has a tomb (see acquire.lua)
-- Returns 1 when the hold is ours: taken now, or by another copy of this same attempt (whose
-- end it never brings earlier, as acquire.lua). When a writer holds the lock, minus the
-- milliseconds left on its lease (0 if unknown); when writers wait, minus the milliseconds
-- until the first of their claims lapses unless its writer attempts again (a writer that takes
-- the lock takes it marked, so its release wakes this waiter).
-- An error reply 'LOCKPERMITS <n>' when the live holders hold permits(n).
-- The key lives as long as its longest shared hold: a grant or renewal only moves its expiry
-- later (permit_release.lua brings it down).
local tomb = tomb_of(ARGV[4])
if buried(tomb) then
  return 0
end
-- A refusal leaves the attempt's tomb, when it has one (its last write; see acquire.lua).
local function refused(reply)
  bury(tomb, ARGV[2])
  return reply
end
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  -- A writer holds it: mark it (as acquire.lua does) so that its release is published.
  local holder = redis.call('GET', KEYS[1])
  if ARGV[3] == '1' and not string.find(holder, '*', 1, true) and is_token(holder) then
    redis.call('SET', KEYS[1], holder .. '*', 'KEEPTTL')
  end
  return refused(-math.max(redis.call('PTTL', KEYS[1]), 0))
elseif kind ~= 'hash' and kind ~= 'none' then
  return redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
end
local now = now_ms()
local ttl = tonumber(ARGV[2])
local all = {}
if kind == 'hash' then
  if redis.call('HEXISTS', KEYS[1], '#n') == 0 then
    -- Not one of ours: left as it is.
    return redis.error_reply('WRONGTYPE the lock key holds a hash that is not a lock')
  end
  all = redis.call('HGETALL', KEYS[1])
end
local held_n, mine = nil, nil
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == '#n' then
    held_n = value
  elseif field == ARGV[1] then
    mine = tonumber(value)
  end
end
if held_n and held_n ~= '0' then
  if latest_permit(all, now) then
    return refused(redis.error_reply('LOCKPERMITS ' .. held_n))
  end
  -- Permits nobody holds any more: the lock is free.
  redis.call('DEL', KEYS[1])
end
if not (mine and mine > now) then
  local claimed = first_claim(KEYS[1] .. ':x', now)
  if claimed then
    -- A writer waits: no new shared hold until it has had its turn.
    if ARGV[3] == '1' then
      redis.pcall('HSET', KEYS[1] .. ':x', '#w', '1')
    end
    return refused(-math.max(claimed - now, 1))
  end
end
-- Another copy of this attempt granted it already: its end only moves later (the guard may
-- have extended it since; see acquire.lua).
local ends = math.max(mine or 0, now + ttl)
redis.call('HSET', KEYS[1], ARGV[1], ends, '#n', 0)
if redis.call('PTTL', KEYS[1]) <= ends - now then
  expire_at(KEYS[1], ends)
end
return 1
