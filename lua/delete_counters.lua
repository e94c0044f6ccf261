--[[ delete_counters: delete some or all counters of one group.

Why one script: the group check and the delete must see one state; deleting all
counters of a registered group must keep its metadata (and its epoch), so the group
still exists and its idempotency records stay valid.

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
KEYS[3]  the idempotency record, <KEYS[1]>:idempotency:<Idempotency-Key> (else KEYS[1] again)
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3]  the request's fingerprint when it carries an Idempotency-Key, else ""
ARGV[4]  a fresh random epoch, written when the group has none yet (with ARGV[3] only)
ARGV[5..] Keys to delete; none means every counter. Absent Keys are ignored.

Reply    {0}      done (or an identical request with this Idempotency-Key was done before)
         {60007}  the app is over its rate limit
         {10004}  the Idempotency-Key was first used with another request
         {10010}  registered mode and the group does not exist
         {10007}  the group is a Community group
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key
local EPOCH = "\254" -- the group's epoch for idempotency records; never a Key either

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local group = KEYS[1]
local held = redis.call("HMGET", group, META, EPOCH)
local meta, epoch = held[1], held[2]
if ARGV[3] ~= "" then
  local outcome = replay_record(KEYS[3], epoch, ARGV[3])
  if outcome == false then return {10004} end
  if outcome then return {0} end
end

if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

if ARGV[3] ~= "" and not epoch then epoch = ARGV[4] end
if #ARGV > 4 then
  redis.call("HDEL", group, unpack(ARGV, 5))
else
  redis.call("DEL", group)
  if meta then redis.call("HSET", group, META, meta) end
end
if ARGV[3] ~= "" then
  redis.call("HSET", group, EPOCH, epoch)
  write_record(KEYS[3], epoch, ARGV[3], "")
elseif epoch and #ARGV == 4 then
  redis.call("HSET", group, EPOCH, epoch) -- all counters gone, the group's life goes on
end
return {0}
