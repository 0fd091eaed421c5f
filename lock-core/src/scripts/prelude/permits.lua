-- The end (server ms) of the latest permit still live at `now` in `all`, the HGETALL of a lock
-- of permits(n) (permit_acquire.lua: '#n' and '#w' are not permits); nil when none is.
local function latest_permit(all, now)
  local latest = nil
  for i = 1, #all, 2 do
    local ends = tonumber(all[i + 1])
    if all[i] ~= '#n' and all[i] ~= '#w' and ends and ends > now and (not latest or ends > latest) then
      latest = ends
    end
  end
  return latest
end
