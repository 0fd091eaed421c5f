-- The value of the lock key `key` when it is held by `token`: the token itself, or the token
-- marked by a waiter ('*', then maybe a fair ticket: acquire.lua, fair.lua). false when the key
-- is gone or another owner's, and when it is not a string: the hash of a lock of permits(n)
-- (permit_acquire.lua) is never a plain lock's.
local function ours(key, token)
  local v = redis.pcall('GET', key)
  if type(v) ~= 'string' then
    return false
  end
  if v == token or string.sub(v, 1, #token + 1) == token .. '*' then
    return v
  end
  return false
end
