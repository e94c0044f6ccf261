--[[ upgrade_group: bring one group and its idempotency records to the current storage
format (format 2), for `python -m service upgrade`, or back to format 1, for
`python -m service downgrade` (a rollback to release 0.1.0).

What changed since format 1 (release 0.1.0): a GroupId holding `%`, `{` or `}` has an
escaped key name (the caller passes the old and the new name); an idempotency record
names the group's epoch (field 0xFE), so a record of format 1, "<fingerprint>\n<outcome>"
(an update) or "<fingerprint>" (a delete), becomes "<epoch>\n<fingerprint>\n<outcome>",
and the group gets an epoch when it has none. A record keeps its time to live.

Why modes: on one Redis (or Sentinel) "move" does the whole group in one atomic step.
On a Cluster the old and the new name of a renamed group are in different slots, so the
caller reads the old ("read"), writes the new ("place"), then removes the old ("drop"),
each in its own slot; a rerun after a crash between them finds the new group already
placed with the same fields and goes on with "drop".

KEYS[1]            the group's old key (its key in format 1)
KEYS[2]            the group's new key (KEYS[1] again when the name does not change)
KEYS[3 .. 2+n]     its records under their old names
KEYS[3+n .. 2+2n]  the same records under their new names (the same when not renamed)
ARGV[1]  "move", "read", "place", "drop" or "strip" (format 2 -> 1: with no record, the
         group's version and epoch go; with records, each record of the group's epoch
         loses it, and a record of another life, which 0.1.0 would misread, goes)
ARGV[2]  a fresh random token: the group's epoch when a record needs one and it has none
ARGV[3]  the length of a fingerprint (hex digits): how a record of format 1 is told apart;
         "0": convert no record (a downgrade's renames)
ARGV[4..] "place": F, then F field/value items of the group (what "read" returned), then a
          value and a time to live in ms for each record (value "" when there was none);
          "drop": F, then the F field/value items "read" returned

Reply    {"moved", n}         move: done, n records converted
         {"conflict"}         move, place: another group holds the new name; nothing written
         {"gone"}             move: no group under the old name (moved since the scan)
         {"not-a-group"}      move: the old name is no hash
         {"current"}          move: the old group holds a version or an epoch, which format
                              1 never wrote: its name is a format 2 one already; left as it is
         {fields, records}    read: the group's {field, value, ...} and each record's
                              {value or "", ttl ms, ...}
         {"placed", n}        place: written under the new name, n records converted
         {"already", n}       place: the new name holds these fields already (a rerun)
         {"dropped"}          drop: the old group and its records are gone
         {"changed"}          drop: the old group changed since "read"; kept
         {"stripped", n}      strip: n records lost their epoch (or the group its fields)
"read" and "drop" are called with the old names only, "place" with the new names only
(KEYS[2] and the second list repeat the first), so each touches one slot.
]]
local EPOCH = "\254"
local mode, token, fingerprint_length = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n = (#KEYS - 2) / 2

-- The record's body in the current format without its epoch, or nil when it is in the
-- current format already (or is no record of ours): it is then left as it is.
local function body_of_format_1(record)
  local first = string.match(record, "^%x+")
  if not first or #first ~= fingerprint_length then return nil end
  if #record == fingerprint_length then return record .. "\n" end -- a delete's record
  if string.sub(record, fingerprint_length + 1, fingerprint_length + 1) ~= "\n" then return nil end
  return record
end

-- Writes each record (value, ttl) under its new name, converted; the group must exist.
local function write_records(group, records)
  local epoch = redis.call("HGET", group, EPOCH)
  local converted = 0
  for i = 1, n do
    local value, ttl = records[2 * i - 1], tonumber(records[2 * i])
    if value and value ~= "" then
      local body = body_of_format_1(value)
      if body then
        if not epoch then
          epoch = token
          redis.call("HSET", group, EPOCH, epoch)
        end
        value = epoch .. "\n" .. body
        converted = converted + 1
      end
      if ttl > 0 then
        redis.call("SET", KEYS[2 + n + i], value, "PX", ttl)
      elseif ttl == -1 then
        redis.call("SET", KEYS[2 + n + i], value)
      end
    end
  end
  return converted
end

local function read_records()
  local records = {}
  for i = 1, n do
    local value = redis.call("GET", KEYS[2 + i])
    records[#records + 1] = value or ""
    records[#records + 1] = value and redis.call("PTTL", KEYS[2 + i]) or -2
  end
  return records
end

-- Whether the hash holds exactly these field/value items, its epoch aside (placing may
-- have given the new group one).
local function holds(key, items, first, count)
  local wanted, wanted_count = {}, 0
  for i = first, first + count - 1, 2 do
    if items[i] ~= EPOCH then
      wanted[items[i]] = items[i + 1]
      wanted_count = wanted_count + 1
    end
  end
  local all = redis.call("HGETALL", key)
  local held_count = 0
  for i = 1, #all, 2 do
    if all[i] ~= EPOCH then
      if wanted[all[i]] ~= all[i + 1] then return false end
      held_count = held_count + 1
    end
  end
  return held_count == wanted_count
end

if mode == "strip" then
  local epoch = redis.call("HGET", KEYS[1], EPOCH)
  if n == 0 then
    redis.call("HDEL", KEYS[1], VERSION, EPOCH)
    return {"stripped", 0}
  end
  local stripped = 0
  for i = 1, n do
    local value = redis.call("GET", KEYS[2 + i])
    if value and not body_of_format_1(value) then
      if epoch and string.sub(value, 1, #epoch + 1) == epoch .. "\n" then
        local body = string.sub(value, #epoch + 2)
        -- A delete's record is the bare fingerprint in format 1 (its outcome is empty).
        if string.sub(body, -1) == "\n" then body = string.sub(body, 1, -2) end
        redis.call("SET", KEYS[2 + i], body, "KEEPTTL")
        stripped = stripped + 1
      else
        redis.call("DEL", KEYS[2 + i])
      end
    end
  end
  return {"stripped", stripped}
end

if mode == "read" then
  return {redis.call("HGETALL", KEYS[1]), read_records()}
end

if mode == "place" then
  local count = tonumber(ARGV[4])
  local status = "placed"
  if redis.call("EXISTS", KEYS[2]) == 1 then
    if not holds(KEYS[2], ARGV, 5, count) then return {"conflict"} end
    status = "already"
  else
    redis.call("HSET", KEYS[2], unpack(ARGV, 5, 4 + count))
  end
  local records = {}
  for i = 5 + count, #ARGV do records[#records + 1] = ARGV[i] end
  return {status, write_records(KEYS[2], records)}
end

if mode == "drop" then
  if not holds(KEYS[1], ARGV, 5, tonumber(ARGV[4])) then return {"changed"} end
  -- The caller passes the old names only (KEYS[2] is KEYS[1] again): every one goes.
  for i = 1, n do redis.call("DEL", KEYS[2 + i]) end
  redis.call("DEL", KEYS[1])
  return {"dropped"}
end

-- "move": everything in one step.
if redis.call("EXISTS", KEYS[1]) == 0 then return {"gone"} end
if redis.call("TYPE", KEYS[1])["ok"] ~= "hash" then return {"not-a-group"} end
if KEYS[1] ~= KEYS[2] and redis.call("HEXISTS", KEYS[1], VERSION) + redis.call("HEXISTS", KEYS[1], EPOCH) > 0 then
  return {"current"} -- versions and epochs came after format 1: its name is escaped already
end
if KEYS[1] ~= KEYS[2] then
  if redis.call("EXISTS", KEYS[2]) == 1 then return {"conflict"} end
  redis.call("RENAME", KEYS[1], KEYS[2])
end
local records = read_records()
local converted = write_records(KEYS[2], records)
for i = 1, n do
  if KEYS[2 + i] ~= KEYS[2 + n + i] then redis.call("DEL", KEYS[2 + i]) end
end
return {"moved", converted}
