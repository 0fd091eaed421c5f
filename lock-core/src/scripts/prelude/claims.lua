-- Writers' claims. A writer (an exclusive or fair acquisition) that waits for a lock records a
-- claim in <lock key>:x, a hash: its claim id (the same for all its attempts) -> the server time
-- (ms) the claim lapses unless the writer's next attempt refreshes it; and '#w' -> '1' while a
-- shared request waits on the claims. While a claim is live, no new shared hold is granted
-- (shared_acquire.lua): writers do not starve. A writer's grant ends its claim, and takes the
-- lock marked when a shared request waits, so that its release wakes it; so does an
-- acquisition that stops waiting (leave.lua). Where the client re-sends (the tombs' flag), an
-- ended claim stays as minus the time its marker lapses, so that a late copy of one of its
-- attempts records nothing. Like a tomb (tomb.lua), the key shares the lock's hash slot but is not declared in
-- KEYS, and is read and written with pcall: where a server refuses it (a migrating slot's
-- source, a server out of memory), the preference lapses for a moment, never the exclusion.
--
-- Drops the claims and markers of `all` (the HGETALL of the claims key `key`) that lapsed by
-- `now`.
local function prune_claims(key, all, now)
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if all[i] ~= '#w' and ends and math.abs(ends) <= now then
      redis.pcall('HDEL', key, all[i])
    end
  end
end
-- Records or refreshes the claim `id` (when given) for `keep` ms from `now`, unless it ended.
local function claim(id, now, keep)
  if not id then
    return
  end
  local key = KEYS[1] .. ':x'
  local all = redis.pcall('HGETALL', key)
  if all.err then
    return
  end
  for i = 1, #all, 2 do
    if all[i] == id and (tonumber(all[i + 1]) or 0) < 0 then
      return
    end
  end
  prune_claims(key, all, now)
  redis.pcall('HSET', key, id, now + keep)
  local left = redis.pcall('PTTL', key)
  if type(left) == 'number' and left < keep then
    redis.pcall('PEXPIRE', key, keep)
  end
end
-- Ends the claim `id` (when given): taken out, or, from a client that re-sends (`resends`:
-- '1'), kept `keep` ms from `now` as ended, so that a late copy of an earlier attempt records
-- nothing (as tombs, only there). True when a shared request waited on the claims (that mark
-- is taken out too: the caller wakes it, by its release or here, and it marks again if still
-- refused).
local function unclaim(id, now, keep, resends)
  local key = KEYS[1] .. ':x'
  if id and resends == '1' then
    if redis.pcall('HEXISTS', key, id) == 1 then
      redis.pcall('HSET', key, id, -(now + keep))
    end
  elseif id then
    redis.pcall('HDEL', key, id)
  end
  return redis.pcall('HDEL', key, '#w') == 1
end
-- The end (server ms) of the first live claim in the claims key `key` at `now`; nil when none
-- is.
local function first_claim(key, now)
  local all = redis.pcall('HGETALL', key)
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
