--[[ delete_counters: delete some or all counters of one group.

Why one script: the group check and the delete must see one state; deleting all
counters of a registered group must keep its metadata, so the group still exists.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2..] Keys to delete; none means every counter. Absent Keys are ignored.

Reply    {0}      done
         {10010}  registered mode and the group does not exist
         {10007}  the group is a Community group
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

local group = KEYS[1]
local meta = redis.call("HGET", group, META)
if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

if #ARGV > 1 then
  redis.call("HDEL", group, unpack(ARGV, 2))
else
  redis.call("DEL", group)
  if meta then redis.call("HSET", group, META, meta) end
end
return {0}
