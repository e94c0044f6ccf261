--[[ read_group: one group's type and counters, as they are at one moment.

Why one script: export promises every group as one state, never half of an update
that ran between two reads.

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
ARGV[1]  "all" for the type and every counter, "type" for the type only

Reply    {Type|false, Key, Value, Key, Value, ...}  unordered; false: no type stored
                                                    (implicit mode, or no such group)
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key
local EPOCH = "\254" -- the group's epoch for idempotency records; never a Key either

local group = KEYS[1]
local reply = {redis.call("HGET", group, META)}
if ARGV[1] ~= "all" then return reply end
local all = redis.call("HGETALL", group)
for i = 1, #all, 2 do
  if all[i] ~= META and all[i] ~= EPOCH and all[i] ~= VERSION then
    reply[#reply + 1] = all[i]
    reply[#reply + 1] = all[i + 1]
  end
end
return reply
