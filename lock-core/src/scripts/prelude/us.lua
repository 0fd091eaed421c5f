-- The server's clock (TIME) in microseconds: below 2^53, so Lua's numbers hold it exactly.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
