--[[ destroy_group: remove a group and all its counters.

Why one script: the existence check and the delete must see one state, so two
concurrent destroys answer once with success and once with 10010. The group's epoch
goes with its hash: its idempotency records can never replay again. So does its
version: watchers get the destroy as the group's last notice, in the same step.

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3]  how to announce the destroy: "PUBLISH", "SPUBLISH" (a Cluster) or "" (live counters off)
ARGV[4]  the group's channel, <KEYS[1]>:changes, then :<db> on a database other than 0

Reply    {0}      destroyed
         {60007}  the app is over its rate limit
         {10010}  registered mode and the group does not exist
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
local held = redis.call("HMGET", group, META, VERSION)
if ARGV[1] == "1" and not held[1] then return {10010} end
redis.call("DEL", group)
local _, version, incarnation = next_version(held[2], "")
announce(ARGV[3], ARGV[4], incarnation, version, "x", {})
return {0}
