--[[ destroy_group: remove a group and all its counters.

Why one script: the existence check and the delete must see one state, so two
concurrent destroys answer once with success and once with 10010.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here

Reply    {0}      destroyed
         {60007}  the app is over its rate limit
         {10010}  registered mode and the group does not exist
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
if ARGV[1] == "1" and redis.call("HEXISTS", group, META) == 0 then return {10010} end
redis.call("DEL", group)
return {0}
