-- Give a lock back, but only if we still own it (compare-and-delete).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] milliseconds the key must still live (min_hold); 0 deletes it now
-- Returns 1 when our lease ended here, 0 when the key had expired or belongs to another owner.
-- A deletion is published on the channel named like the key, which waiters subscribe to.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local keep = tonumber(ARGV[2])
if keep > 0 then
  -- Never lengthen the lease: only shorten it to the end of the minimum hold. Waiters learn the
  -- new end from their next attempt.
  if keep < redis.call('PTTL', KEYS[1]) then
    redis.call('PEXPIRE', KEYS[1], keep)
  end
else
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1], '')
end
return 1
