-- Renew a lease, but only if we still own it (compare-and-pexpire).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] new lease in milliseconds, counted from now
-- Returns 1 when renewed, 0 when the key had expired or belongs to another owner.
-- Ours: the token, or the token marked by a waiter ('*', then maybe a fair ticket).
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  -- Not a string: the key of a lock of permits(n) (permit_acquire.lua), so not ours.
  return 0
end
if v ~= ARGV[1] and (not v or string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '*') then
  return 0
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
