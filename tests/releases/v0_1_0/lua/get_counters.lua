--[[ get_counters: read counters of one group.

Why one script: the group check and the read must see one state, so a group
destroyed between them cannot answer with stale counters.

KEYS[1]  the group's hash, {<sdkappid>:<GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3..] Keys to read; none means every counter of the group

Reply    {0, Key, Value, Key, Value, ...}  no Keys asked: every counter, unordered
         {0, Value|nil, Value|nil, ...}    Keys asked: one per Key, nil where absent
         {60007}                           the app is over its rate limit
         {10010}                           registered mode and the group does not exist
         {10007}                           the group is a Community group
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
local meta = redis.call("HGET", group, META)
if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

if #ARGV > 2 then
  local values = redis.call("HMGET", group, unpack(ARGV, 3))
  table.insert(values, 1, 0)
  return values
end
local all = redis.call("HGETALL", group)
local reply = {0}
for i = 1, #all, 2 do
  if all[i] ~= META then
    reply[#reply + 1] = all[i]
    reply[#reply + 1] = all[i + 1]
  end
end
return reply
