--[[ snapshot_group: every counter of one group with the group's version, for a watcher's snapshot.

Why one script: the counters and the version must be one state, so that the changes
announced after version N apply exactly on top of this snapshot.

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here

Reply    {0, version, Key, Value, Key, Value, ...}  version: "<version> <incarnation>",
                                                    "" before the group's first change
         {60007}                                    the app is over its rate limit
         {10010}                                    registered mode and the group does not exist
         {10007}                                    the group is a Community group
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key
local EPOCH = "\254" -- the group's epoch for idempotency records; never a Key either

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
local all = redis.call("HGETALL", group)
local meta, version = false, ""
local reply = {0, ""}
for i = 1, #all, 2 do
  local field = all[i]
  if field == META then
    meta = all[i + 1]
  elseif field == VERSION then
    version = all[i + 1]
  elseif field ~= EPOCH then
    reply[#reply + 1] = field
    reply[#reply + 1] = all[i + 1]
  end
end
if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end
reply[2] = version
return reply
