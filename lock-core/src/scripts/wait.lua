-- A waiter's attempt: take the lock, or mark it so that its release is published.
-- KEYS[1] lock key  <prefix>{<name>}   (value: the holder's token, plus '*' once a waiter waits)
-- ARGV[1] a fresh owner token, never sent before
-- ARGV[2] lease in milliseconds
-- Returns 1 when the lock is ours. When another owner holds it, marks the key (keeping its
-- expiry) and returns minus the milliseconds left on their lease (0 if unknown), so a waiter
-- knows the latest moment worth trying again.
-- Only waiters run this, after subscribing to the key's channel: the uncontended acquire is a
-- plain SET NX PX, and the uncontended release publishes nothing.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
local holder = redis.call('GET', KEYS[1])
if string.sub(holder, -1) ~= '*' then
  redis.call('SET', KEYS[1], holder .. '*', 'KEEPTTL')
end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return -left
end
return 0
