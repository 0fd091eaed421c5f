-- What an operator sees of a lock of `permits(n)`, n > 1 (see permit_acquire.lua): read only.
-- KEYS[1] lock key
-- Returns {n, waited ('1' or '0'), token, milliseconds left, token, milliseconds left, ...} for
-- the live permits, or an empty list when the key is not such a lock (a hash without '#n').
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  return {}
end
local now = now_ms()
local out = {'0', '0'}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == '#n' then
    out[1] = value
  elseif field == '#w' then
    out[2] = '1'
  else
    local ends = tonumber(value)
    if ends and ends > now then
      out[#out + 1] = field
      out[#out + 1] = tostring(ends - now)
    end
  end
end
if out[1] == '0' then
  -- No '#n': a hash of something else.
  return {}
end
return out
