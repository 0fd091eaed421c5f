-- A writer (an exclusive or fair attempt, acquire.lua and fair.lua) that finds the lock key is
-- not a string (needs permits.lua). Returns what it may do:
-- - 'take', waited: no holder is live, the key may be replaced by the writer's string (waited:
--   a waiter asked to be told, so the new value is to be marked);
-- - 'refuse', reply: holders are live; the reply to refuse with (minus the milliseconds until
--   the last shared hold ends; the error 'LOCKPERMITS <n>' for a lock of permits(n));
-- - 'error', reply: the key is not a lock (left as it is).
-- A writer that waits (`mark`) on shared holds marks the hash so that the last of them is
-- published; its claim (claims.lua) keeps new shared holds out meanwhile.
local function writer_meets_hash(key, now, mark)
  local kind = redis.call('TYPE', key).ok
  if kind ~= 'hash' then
    return 'error', redis.error_reply('WRONGTYPE the lock key holds a ' .. kind .. ', not a lock')
  end
  local all = redis.call('HGETALL', key)
  local n, waited = nil, false
  for i = 1, #all, 2 do
    if all[i] == '#n' then
      n = all[i + 1]
    elseif all[i] == '#w' then
      waited = true
    end
  end
  if not n then
    return 'error', redis.error_reply('WRONGTYPE the lock key holds a hash that is not a lock')
  end
  local latest = latest_permit(all, now)
  if not latest then
    return 'take', waited
  end
  if n ~= '0' then
    return 'refuse', redis.error_reply('LOCKPERMITS ' .. n)
  end
  if mark and not waited then
    redis.call('HSET', key, '#w', '1')
  end
  return 'refuse', -math.max(latest - now, 1)
end
