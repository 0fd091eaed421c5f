-- A fair attempt: take the lock only when it is free and this acquisition is first in line.
-- KEYS[1] lock key   <prefix>{<name>}
-- KEYS[2] queue key  <prefix>{<name>}:q   (hash: ticket -> '<arrival> <expiry ms>', '#' -> arrivals)
-- ARGV[1] a fresh owner token: this attempt's alone
-- ARGV[2] lease in milliseconds
-- ARGV[3] this acquisition's ticket (the same for all its attempts)
-- ARGV[4] how long a ticket stays in line without being refreshed, in milliseconds
-- ARGV[5] '1' to mark a held key so that its release is published (see acquire.lua), else '0'
-- ARGV[6] '1' from a client that re-sends: the attempt has a tomb (see acquire.lua); a late
--         copy of an attempt refused or released takes nothing, and leaves the line alone
-- A refused attempt that marks keeps its ticket as its claim too (prelude/claims.lua): no new
-- shared hold is granted while a fair writer waits.
-- Returns 1 when the lock is ours (set now, or by another copy of this attempt, whose expiry it
-- never shortens); when others
-- are still in line, the key is taken already marked, so that its release is published to them.
-- A marked key's value names the first ticket in line after the '*' (kept up to date by every
-- fair attempt): its release's message names it, and only that waiter wakes.
-- Otherwise this acquisition is in line (its ticket refreshed) and it returns minus the
-- milliseconds worth waiting at most: the holder's lease left, or, when the lock is free but
-- another ticket is first, the time that ticket has left unless its waiter refreshes it (a
-- waiter that died leaves the line by then; a live one takes the lock and publishes its release).
local tomb = tomb_of(ARGV[6])
if buried(tomb) then
  return 0
end
-- A refusal leaves the attempt's tomb, when it has one (its last write; see acquire.lua).
local function refused(reply)
  if ARGV[5] == '1' and type(reply) == 'number' then
    claim(ARGV[3], now_ms(), tonumber(ARGV[4]))
  end
  bury(tomb, ARGV[2])
  return reply
end
local now = now_ms()
-- Tickets whose waiter stopped refreshing them leave the line; find who is first.
local first, first_arrival, first_expiry, mine = nil, nil, nil, nil
-- The first of the others, who is next once this acquisition takes the lock.
local after, after_arrival = nil, nil
local waiting = 0
local line = redis.call('HGETALL', KEYS[2])
for i = 1, #line, 2 do
  local ticket, value = line[i], line[i + 1]
  if ticket ~= '#' then
    local space = string.find(value, ' ', 1, true)
    local arrival = tonumber(string.sub(value, 1, space - 1))
    local expiry = tonumber(string.sub(value, space + 1))
    if expiry < now then
      redis.call('HDEL', KEYS[2], ticket)
    else
      if ticket == ARGV[3] then
        mine = arrival
      else
        waiting = waiting + 1
        if after_arrival == nil or arrival < after_arrival then
          after, after_arrival = ticket, arrival
        end
      end
      if first_arrival == nil or arrival < first_arrival then
        first, first_arrival, first_expiry = ticket, arrival, expiry
      end
    end
  end
end
local holder = redis.pcall('GET', KEYS[1])
-- Shared holds are live (the refusal's reply), or a waiter of another kind asked to be told
-- when this lock is released (shared requests waiting on a hash this attempt takes over).
local blocked, waited = nil, false
if type(holder) == 'table' then
  -- Not a string: a hash of holders sharing the key (permits(n), or shared holds), refused
  -- while one is live; once none is, the lock is free (as in acquire.lua; the SET that takes it
  -- replaces the hash). Any other type is not a lock: left as it is.
  local may, reply = writer_meets_hash(KEYS[1], now, ARGV[5] == '1')
  if may == 'error' then
    return reply
  elseif may == 'refuse' and type(reply) ~= 'number' then
    return refused(reply)
  elseif may == 'refuse' then
    blocked = reply
  else
    waited = reply
  end
  holder = false
end
local ours = holder and (holder == ARGV[1] or string.sub(holder, 1, #ARGV[1] + 1) == ARGV[1] .. '*')
if ours or (not holder and not blocked and (first == nil or first == ARGV[3])) then
  if not ours then
    -- The grant takes this acquisition's claim out (claims.lua).
    local readers = unclaim(ARGV[3], now, tonumber(ARGV[4]), ARGV[6])
    local value = ARGV[1]
    if waiting > 0 then
      value = value .. '*' .. after
    elseif waited or readers then
      value = value .. '*'
    end
    redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  elseif redis.call('PTTL', KEYS[1]) <= tonumber(ARGV[2]) then
    -- Set by another copy of this attempt: a write of our own, so that a `WAIT` after it on
    -- this connection covers the grant too, and one that never shortens the lease (the guard
    -- may have extended it since; see acquire.lua, also for the `<=`).
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  else
    redis.call('SET', KEYS[1], holder, 'KEEPTTL')
  end
  if mine then
    redis.call('HDEL', KEYS[2], ARGV[3])
  end
  return 1
end
if not mine then
  mine = redis.call('HINCRBY', KEYS[2], '#', 1)
end
redis.call('HSET', KEYS[2], ARGV[3], string.format('%d %d', mine, now + tonumber(ARGV[4])))
-- The line lives as long as its longest-kept ticket: only ever lengthen its expiry (waiters of
-- other managers may keep their tickets longer).
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[4]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
if blocked then
  return refused(blocked)
end
if not holder then
  return refused(-math.max(first_expiry - now, 1))
end
-- Mark the holder's key (once this waiter listens), naming the first ticket in line; a holder
-- that is not lock-core's is left as it is (see is_token).
local star = string.find(holder, '*', 1, true)
local base = star and string.sub(holder, 1, star - 1) or holder
if (ARGV[5] == '1' or star) and is_token(base) then
  local marked = base .. '*' .. (first or ARGV[3])
  if holder ~= marked then
    redis.call('SET', KEYS[1], marked, 'KEEPTTL')
  end
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return refused(-left)
end
return refused(0)
