--[[ import_group: make one group exactly what an import line says, all or nothing.

Why one script: the comparison with what is there and the write must see one state,
and Redis does not undo a script's earlier writes: every check runs before the first
write, so a group is imported whole or not at all.

Why strings: each Value arrives as the decimal text Python checked against int64 and
is compared and stored as that text; none passes through a Lua number (a double,
exact only to 2^53).

KEYS[1]  the group's hash, {<sdkappid>:<escaped GroupId>}
ARGV[1]  "1" when the app stores its groups' types (registered mode), "0" (implicit)
ARGV[2]  "overwrite" to replace a group that differs, anything else to leave it
ARGV[3]  "1" for a dry run: every check and the same reply, nothing written
ARGV[4]  the group's Type (registered mode), "" (implicit)
ARGV[5..] Key, Value, Key, Value, ... (0 to 20 pairs, Keys distinct, Values int64)

Reply    {0}      created: there was no such group
         {1}      unchanged: the group is already exactly this (a rerun)
         {2}      conflict: a different group is there; nothing written
         {3}      overwritten: a different group was there and is replaced
         {10063}  more than 20 pairs; nothing written
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key
local EPOCH = "\254" -- the group's epoch for idempotency records; never a Key either
local MAX_KEYS = 20

local pairs_given = (#ARGV - 4) / 2
if pairs_given > MAX_KEYS then return {10063} end

local group = KEYS[1]
local wanted_type = ARGV[1] == "1" and ARGV[4] or false
local wanted = {}
for i = 5, #ARGV, 2 do wanted[ARGV[i]] = ARGV[i + 1] end

local held = redis.call("HGETALL", group)
local exists = #held > 0
local same = exists
local held_type, held_counters = false, 0
for i = 1, #held, 2 do
  local field, value = held[i], held[i + 1]
  if field == META then
    held_type = value
  elseif field ~= EPOCH and field ~= VERSION then
    held_counters = held_counters + 1
    if wanted[field] ~= value then same = false end
  end
end
if held_type ~= wanted_type or held_counters ~= pairs_given then same = false end

local outcome
if not exists and not wanted_type and pairs_given == 0 then
  return {1} -- an implicit group with no counters is no state at all: nothing to store
elseif not exists then
  outcome = 0
elseif same then
  return {1}
elseif ARGV[2] == "overwrite" then
  outcome = 3
else
  return {2}
end
if ARGV[3] == "1" then return {outcome} end

-- Every check is behind us: from here on only writes.
local fields = {}
if wanted_type then
  fields[#fields + 1] = META
  fields[#fields + 1] = wanted_type
end
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
if exists then redis.call("DEL", group) end
if #fields > 0 then redis.call("HSET", group, unpack(fields)) end
return {outcome}
