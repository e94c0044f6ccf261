--[[ create_group: register a group (registered mode).

Why one script: two concurrent creates of one GroupId must not both succeed.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
ARGV[1]  always "1" (create_group stores groups in registered mode only)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3]  the group Type (Private, Work, Public, ChatRoom, Meeting, AVChatRoom, Community)

Reply    {0}      created
         {60007}  the app is over its rate limit
         {10021}  the GroupId is taken
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
if redis.call("EXISTS", group) == 1 then return {10021} end
redis.call("HSET", group, META, ARGV[3])
return {0}
