-- The hash of a lock whose holders share its key: permits(n), n > 1 (permit_acquire.lua), or
-- shared holds (shared_acquire.lua, '#n' = 0). Its fields: '#n' -> n; '#w' -> '1' while a
-- waiter asks for releases to be published; and per holder, the holder's token -> the server
-- time (ms) its lease ends.
--
-- Whether `field` of such a hash is not a holder's.
local function is_meta(field)
  return field == '#n' or field == '#w'
end
-- The end (server ms) of the latest holder's lease still live at `now` in `all`, the HGETALL of
-- such a hash; nil when none is.
local function latest_permit(all, now)
  local latest = nil
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if not is_meta(all[i]) and ends and ends > now and (not latest or ends > latest) then
      latest = ends
    end
  end
  return latest
end
-- Expires `key` at server time `ends` (ms): at an absolute time on the clock the ends were
-- written with (TIME), as a relative PEXPIRE would count from the script's start, which TIME
-- may have left behind. One millisecond more: the ends are floored to the millisecond.
local function expire_at(key, ends)
  redis.call('PEXPIREAT', key, ends + 1)
end
