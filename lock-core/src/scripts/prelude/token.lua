-- Whether `value` is in lock-core's token format, `<holder>|<unix ms>|<lease ms>[w]|<32 hex>`,
-- or lock-core 0.1.0's `<holder>|<unix ms>|<32 hex>` (token.rs). Only
-- such a value is ever marked: redis-py's, redsync's and node-redlock's holders (and lock-core
-- before holder ids) compare the value whole on release, so a mark would make their release
-- fail and leave their key to its ttl. Their waiters poll and retry at the lease end instead.
local function is_token(value)
  local random = string.rep('[0-9a-f]', 32) .. '$'
  return string.find(value, '^[^|%*%s%c]+|%d+|%d+w?|' .. random) ~= nil
    or string.find(value, '^[^|%*%s%c]+|%d+|' .. random) ~= nil
end
