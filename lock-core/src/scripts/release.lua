-- Give a lock back, but only if we still own it (compare-and-delete).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] milliseconds the key must still live (min_hold); 0 deletes it now
-- ARGV[3] 'SPUBLISH' on a Redis 7 cluster (the message reaches only the key's shard), else
--         'PUBLISH'
-- ARGV[4] '1' from a client that re-sends (the cluster client), else absent: leave the tomb of
--         the attempt that took this lease (prelude/tomb.lua). A copy of that attempt still on
--         its way would take the lock again for nobody; the tomb refuses it for as long as the
--         lease had left.
-- Returns 1 when our lease ended here, 0 when the key had expired or belongs to another owner.
-- A key that a waiter marked (token .. '*', see acquire.lua) is published on the channel named
-- like the key when it is deleted; an unmarked one is not: nobody listens. The message is what
-- follows the '*': the first ticket in the line of fair waiters, which fair.lua keeps there
-- (only that waiter may take the lock now, so only it need wake), or nothing.
local v = ours(KEYS[1], ARGV[1])
if not v then
  return 0
end
local marked = v ~= ARGV[1]
-- The tomb is written after the key's own change, with pcall: a server out of memory refuses
-- only a script's first write that can grow it, and the release must still give the lock back.
local left = ARGV[4] == '1' and redis.call('PTTL', KEYS[1])
local keep = tonumber(ARGV[2])
if keep > 0 then
  -- Never lengthen the lease: only shorten it to the end of the minimum hold. The token is
  -- retired ('~'), so that no extend still in flight can lengthen the key again. Waiters learn
  -- the new end from their next attempt.
  redis.call('SET', KEYS[1], ARGV[1] .. '~', 'KEEPTTL')
  if keep < redis.call('PTTL', KEYS[1]) then
    redis.call('PEXPIRE', KEYS[1], keep)
  end
  if left and left > 0 then
    bury(tomb_of(ARGV[4]), left)
  end
  return 1
end
redis.call('DEL', KEYS[1])
if left and left > 0 then
  bury(tomb_of(ARGV[4]), left)
end
if marked then
  local first = string.sub(v, #ARGV[1] + 2)
  redis.call(ARGV[3] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH', KEYS[1], first)
end
return 1
