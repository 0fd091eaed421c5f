-- Renew a lease, but only if we still own it (compare-and-pexpire).
-- KEYS[1] lock key
-- ARGV[1] owner token
-- ARGV[2] new lease in milliseconds, counted from now
-- Returns 1 when renewed, 0 when the key had expired or belongs to another owner.
if not ours(KEYS[1], ARGV[1]) then
  return 0
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
