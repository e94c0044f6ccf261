--[[ delete_counters: delete some or all counters of one group.

Why one script: the group check and the delete must see one state; deleting all
counters of a registered group must keep its metadata, so the group still exists.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
KEYS[3]  the idempotency record, {<sdkappid>:<GroupId>}:idempotency:<Idempotency-Key>
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3]  the request's fingerprint when it carries an Idempotency-Key, else ""
ARGV[4..] Keys to delete; none means every counter. Absent Keys are ignored.

Reply    {0}      done (or an identical request with this Idempotency-Key was done before)
         {60007}  the app is over its rate limit
         {10004}  the Idempotency-Key was first used with another request
         {10010}  registered mode and the group does not exist
         {10007}  the group is a Community group
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end
if ARGV[3] ~= "" then
  local record = redis.call("GET", KEYS[3])
  if record then
    if record ~= ARGV[3] then return {10004} end
    return {0}
  end
end

local group = KEYS[1]
local meta = redis.call("HGET", group, META)
if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

if #ARGV > 3 then
  redis.call("HDEL", group, unpack(ARGV, 4))
else
  redis.call("DEL", group)
  if meta then redis.call("HSET", group, META, meta) end
end
if ARGV[3] ~= "" then
  redis.call("SET", KEYS[3], ARGV[3], "EX", 86400)
end
return {0}
