-- live (included after the header of every command script): a group's version and the
-- notice of each change, written by the script that applies the change, so a change
-- and its notice are one atomic step and no notice names a change that was not made.
--
-- Field 0xFD of the group's hash holds "<version> <incarnation>": how many changes this
-- life of the group has seen, and a random token drawn at its first change. destroy_group
-- deletes the hash, so a re-created group starts again at 1 under another incarnation
-- (a watcher's stale Last-Event-ID can never pass for the new group's). 0xFD is never
-- valid UTF-8, so never a Key; it does not count toward the 20 Keys. A version stays
-- far below 2^53, exact as a Lua number; counter values never become Lua numbers.
local VERSION = "\253"

-- The group's next version after `held` (its 0xFD field, false before any change):
-- the field's new value, the version as a decimal string, and the incarnation.
local function next_version(held, token)
  if not held then return "1 " .. token, "1", token end
  local space = string.find(held, " ", 1, true)
  local version = string.format("%.0f", tonumber(string.sub(held, 1, space - 1)) + 1)
  local incarnation = string.sub(held, space + 1)
  return version .. " " .. incarnation, version, incarnation
end

-- The notice "<incarnation>\255<version>\255<kind>\255<item>\255<item>..." on the
-- group's channel: `how` is PUBLISH, SPUBLISH (a Cluster: the channel is in the
-- group's slot) or "" (live counters off). 0xFF is never in a Key or a value, so it
-- separates the items whatever a Key holds.
local function announce(how, channel, incarnation, version, kind, items)
  if how == "" then return end
  redis.call(how, channel, table.concat({incarnation, version, kind, unpack(items)}, "\255"))
end
