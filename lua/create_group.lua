--[[ create_group: register a group (registered mode).

Why one script: two concurrent creates of one GroupId must not both succeed.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
ARGV[1]  the group Type (Private, Work, Public, ChatRoom, Meeting, AVChatRoom, Community)

Reply    {0}      created
         {10021}  the GroupId is taken
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

local group = KEYS[1]
if redis.call("EXISTS", group) == 1 then return {10021} end
redis.call("HSET", group, META, ARGV[1])
return {0}
