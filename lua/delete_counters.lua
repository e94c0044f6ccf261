--[[ delete_counters: delete some or all counters of one group.

Why one script: the group check and the delete must see one state; deleting all
counters of a registered group must keep its metadata (and its epoch), so the group
still exists and its idempotency records stay valid. A delete that removed a Key
raises the group's version and announces the Keys it removed in the same step; one
that removed none changes nothing and announces nothing.

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
KEYS[2]  the app's rate-limit window, {ratelimit:<sdkappid>} (KEYS[1] again when ARGV[2] is "0")
KEYS[3]  the idempotency record, <KEYS[1]>:idempotency:<Idempotency-Key> (else KEYS[1] again)
ARGV[1]  "1" when the group must have been created (registered mode), "0" (implicit)
ARGV[2]  the app's rate limit in calls per second, checked here first; "0": not here
ARGV[3]  the request's fingerprint when it carries an Idempotency-Key, else ""
ARGV[4]  a fresh random token: the group's epoch when it has none yet (with ARGV[3] only),
         and its incarnation when this is its first change
ARGV[5]  how to announce the change: "PUBLISH", "SPUBLISH" (a Cluster) or "" (live counters off)
ARGV[6]  the group's channel, <KEYS[1]>:changes, then :<db> on a database other than 0
ARGV[7]  the idempotency record's lifetime in seconds (`idempotency_ttl`)
ARGV[8..] Keys to delete; none means every counter. Absent Keys are ignored.

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
local held = redis.call("HMGET", group, META, EPOCH, VERSION)
local meta, epoch = held[1], held[2]
if ARGV[3] ~= "" then
  local outcome = replay_record(KEYS[3], epoch, ARGV[3])
  if outcome == false then return {10004} end
  if outcome then return {0} end
end

if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

-- The Keys this call removes, named in the notice; the metadata fields stay.
local gone = {}
if #ARGV > 7 then
  local asked = {unpack(ARGV, 8)}
  local present = redis.call("HMGET", group, unpack(asked))
  for i = 1, #asked do
    if present[i] then gone[#gone + 1] = asked[i] end
  end
else
  for _, field in ipairs(redis.call("HKEYS", group)) do
    if field ~= META and field ~= EPOCH and field ~= VERSION then gone[#gone + 1] = field end
  end
end

if ARGV[3] ~= "" and not epoch then epoch = ARGV[4] end
if #gone > 0 then
  redis.call("HDEL", group, unpack(gone))
  local version_field, version, incarnation = next_version(held[3], ARGV[4])
  redis.call("HSET", group, VERSION, version_field)
  announce(ARGV[5], ARGV[6], incarnation, version, "d", gone)
end
if ARGV[3] ~= "" then
  redis.call("HSET", group, EPOCH, epoch)
  write_record(KEYS[3], epoch, ARGV[3], "", ARGV[7])
end
return {0}
