-- Tombs. A client that re-sends by itself (the cluster client; Sentinel after a failover) passes
-- '1' as the scripts' last argument, and then each attempt has a tomb, <lock key>:gone:<token>.
-- A copy of a re-sent attempt can land after the client's later commands; once the attempt was
-- refused (acquire scripts) or released (release scripts), its tomb makes such a late copy take
-- nothing while it lives: the attempt's ttl from the refusal, the lease's remainder from the
-- release. The tomb shares the lock's hash slot but is not declared in KEYS: a second key would
-- fail the script with TRYAGAIN while the slot migrates. It is read and written with pcall,
-- after the key's own change, so where a server refuses it (a migrating slot's source node, a
-- server out of memory) the script goes on without it.
--
-- The tomb of the attempt whose token is ARGV[1], when `flag` is '1'; else false.
local function tomb_of(flag)
  return flag == '1' and KEYS[1] .. ':gone:' .. ARGV[1]
end
-- Whether `tomb` (a key, or false) says its attempt was refused or released already.
local function buried(tomb)
  return tomb and redis.pcall('EXISTS', tomb) == 1
end
-- Leaves `tomb` (a key, or false) for `ms` milliseconds.
local function bury(tomb, ms)
  if tomb then
    redis.pcall('SET', tomb, '1', 'PX', ms)
  end
end
