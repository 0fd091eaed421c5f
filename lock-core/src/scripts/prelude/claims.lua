-- Writers' claims. A writer (an exclusive or fair acquisition) that waits for a lock records a
-- claim in <lock key>:x, a hash: its claim id (the same for all its attempts) -> the server time
-- (ms) the claim lapses unless the writer's next attempt refreshes it; and '#w' -> '1' while a
-- shared request waits on the claims. While a claim is live, no new shared hold is granted
-- (shared_acquire.lua): writers do not starve. A writer's grant takes its claim out, and takes
-- the lock marked when a shared request waits, so that its release wakes it. Like a tomb
-- (tomb.lua), the key shares the lock's hash slot but is not declared in KEYS, and is read and
-- written with pcall: where a server refuses it (a migrating slot's source, a server out of
-- memory), the preference lapses for a moment, never the exclusion.
--
-- Records or refreshes the claim `id` (when given) for `keep` ms from `now`.
local function claim(id, now, keep)
  if not id then
    return
  end
  local key = KEYS[1] .. ':x'
  redis.pcall('HSET', key, id, now + keep)
  local left = redis.pcall('PTTL', key)
  if type(left) == 'number' and left < keep then
    redis.pcall('PEXPIRE', key, keep)
  end
end
-- Takes the claim `id` out (when given); true when a shared request waited on the claims (the
-- mark is taken out too: the caller's release will wake it, and it marks again if refused).
local function unclaim(id)
  local key = KEYS[1] .. ':x'
  if id then
    redis.pcall('HDEL', key, id)
  end
  return redis.pcall('HDEL', key, '#w') == 1
end
-- The end (server ms) of the first live claim at `now`; nil when none is.
local function first_claim(now)
  local all = redis.pcall('HGETALL', KEYS[1] .. ':x')
  if all.err then
    return nil
  end
  local first = nil
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if all[i] ~= '#w' and ends and ends > now and (not first or ends < first) then
      first = ends
    end
  end
  return first
end
