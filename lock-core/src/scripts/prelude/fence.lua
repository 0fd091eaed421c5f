-- Advances the fencing counter at `key` and returns the new token: the larger of the last token
-- + 1 and the server's clock in microseconds (needs us.lua). While the counter lives, tokens grow
-- by it; once it has expired (`keep` ms after its last use) or was lost with the server's data,
-- the clock still puts every new token above every earlier one. Tokens stay below 2^53, so
-- Lua's numbers hold them exactly.
local function next_fence(key, keep)
  local token = now_us()
  local last = tonumber(redis.call('GET', key) or '0')
  if last and last >= token then
    token = last + 1
  end
  redis.call('SET', key, string.format('%.0f', token), 'PX', keep)
  return token
end
