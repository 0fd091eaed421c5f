-- What an operator sees of a lock of `permits(n)`, n > 1, or of shared holds (n = 0; see
-- prelude/permits.lua): read only.
-- KEYS[1] lock key
-- Returns {n, waited ('1' or '0'), token, milliseconds left, token, milliseconds left, ...} for
-- the live permits, or an empty list when the key is not such a lock (a hash without '#n').
-- Another client's hash (no '#n') is left unread: it may be large.
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' or redis.call('HEXISTS', KEYS[1], '#n') == 0 then
  return {}
end
local now = now_ms()
local out = {false, '0'}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  if field == '#n' then
    out[1] = value
  elseif field == '#w' then
    out[2] = '1'
  elseif not is_meta(field) then
    local ends = tonumber(value)
    if ends and ends > now then
      out[#out + 1] = field
      out[#out + 1] = tostring(ends - now)
    end
  end
end
if not out[1] then
  -- No '#n': a hash of something else.
  return {}
end
return out
