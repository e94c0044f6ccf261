--[[ update_counters: Set, Increase or Decrease counters of one group, all or nothing.

Why one script: the group check, the overflow and key-count checks and the write
must see one state. Redis does not undo a script's earlier writes when a later
call fails, so every check runs before the single HSET at the end.

Why limbs: a Lua number is a double, exact only to 2^53. A counter value stays a
decimal string; for Increase/Decrease it is split into a high and a low limb of
at most 10 and 9 digits, each exact as a double, added with carry, range-checked
against int64, and formatted back to a string. Two operands of at most 15 characters
(below 10^15, so their sum is below 2^53) skip the limbs: a double is exact there.
Set does no arithmetic at all.

Why an epoch: an Idempotency-Key's record belongs to one life of the group. The
group's hash holds a random epoch (field 0xFE) from its first call with a key; a
record is only replayed while the group still holds the epoch it names, so a record
neither outlives destroy_group nor replays into a re-created group of the same ID.

Why the notice is here: the change, the group's new version (field 0xFD) and the
notice to watchers are one step; a failed or replayed call changes nothing and
announces nothing.

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
ARGV[7]  "set" or "add"
ARGV[8]  the idempotency record's lifetime in seconds (`idempotency_ttl`)
ARGV[9..] Key, Value, Key, Value, ... (1 to 20 pairs, Keys distinct). With "add",
         Value is the signed amount to add as a decimal string; a Decrease arrives
         negated, so it may be 9223372036854775808, one past int64.

Reply    {0, value, value, ...}  each Key's value after the update, request order (also
                                 when replaying the record of an earlier identical request)
         {60007}                 the app is over its rate limit
         {10004}                 the Idempotency-Key was first used with another request
         {10010}                 registered mode and the group does not exist
         {10007}                 the group is a Community group
         {10004, Key}            that Key's result would leave int64
         {10063, count}          the group would hold count (> 20) keys
]]
local META = "\255" -- group metadata field; never valid UTF-8, so never a Key
local EPOCH = "\254" -- the group's epoch for idempotency records; never a Key either
local MAX_KEYS = 20
local LIMB = 1000000000
local MAX_HI, MAX_LO, MIN_LO = 9223372036, 854775807, 854775808

if over_rate_limit(KEYS[2], ARGV[2]) then return {60007} end

local keys, amounts = {}, {}
for i = 9, #ARGV, 2 do
  keys[#keys + 1] = ARGV[i]
  amounts[#amounts + 1] = ARGV[i + 1]
end

-- One read for the group's metadata, its epoch, its version and every Key's old value.
local group = KEYS[1]
local old = redis.call("HMGET", group, META, EPOCH, VERSION, unpack(keys))
local meta = table.remove(old, 1)
local epoch = table.remove(old, 1)
local version_held = table.remove(old, 1)

if ARGV[3] ~= "" then
  local outcome = replay_record(KEYS[3], epoch, ARGV[3])
  if outcome == false then return {10004} end
  if outcome then
    local replay = {0}
    for value in string.gmatch(outcome, "[^,]+") do
      replay[#replay + 1] = value
    end
    return replay
  end
end

if ARGV[1] == "1" and not meta then return {10010} end
if meta == "Community" then return {10007} end

local function split(s)
  local sign = 1
  if string.byte(s, 1) == 45 then sign, s = -1, string.sub(s, 2) end
  local n = #s
  if n <= 9 then return 0, sign * tonumber(s) end
  return sign * tonumber(string.sub(s, 1, n - 9)), sign * tonumber(string.sub(s, n - 8))
end

local function add(a, b)
  -- The common case, small counters: two operands of at most 15 characters (sign
  -- included) are below 10^15 in magnitude, so their sum is below 2^53 and a double adds
  -- and prints it exactly; the limbs are only for operands near the int64 edges.
  if #a <= 15 and #b <= 15 then
    return string.format("%.0f", tonumber(a) + tonumber(b))
  end
  local a_hi, a_lo = split(a)
  local b_hi, b_lo = split(b)
  local hi, lo = a_hi + b_hi, a_lo + b_lo
  if lo >= LIMB then hi, lo = hi + 1, lo - LIMB
  elseif lo <= -LIMB then hi, lo = hi - 1, lo + LIMB end
  -- give both limbs the sign of the whole
  if hi > 0 and lo < 0 then hi, lo = hi - 1, lo + LIMB
  elseif hi < 0 and lo > 0 then hi, lo = hi + 1, lo - LIMB end
  if hi > MAX_HI or hi < -MAX_HI
    or (hi == MAX_HI and lo > MAX_LO) or (hi == -MAX_HI and lo < -MIN_LO) then
    return nil
  end
  local sign = (hi < 0 or lo < 0) and "-" or ""
  hi, lo = math.abs(hi), math.abs(lo)
  if hi == 0 then return sign .. string.format("%.0f", lo) end
  return sign .. string.format("%.0f%09.0f", hi, lo)
end


local new, added = {}, 0
for i = 1, #keys do
  if not old[i] then added = added + 1 end
  if ARGV[7] == "set" then
    new[i] = amounts[i]
  else
    new[i] = add(old[i] or "0", amounts[i])
    if not new[i] then return {10004, keys[i]} end
  end
end

if added > 0 then -- only a new Key can break the limit
  local held = redis.call("HLEN", group) - (meta and 1 or 0) - (epoch and 1 or 0)
    - (version_held and 1 or 0) + added
  if held > MAX_KEYS then return {10063, held} end
end

local version_field, version, incarnation = next_version(version_held, ARGV[4])
local fields, changed = {VERSION, version_field}, {}
for i = 1, #keys do
  fields[#fields + 1] = keys[i]
  fields[#fields + 1] = new[i]
  changed[#changed + 1] = keys[i]
  changed[#changed + 1] = new[i]
end
if ARGV[3] ~= "" and not epoch then
  epoch = ARGV[4]
  fields[#fields + 1] = EPOCH
  fields[#fields + 1] = epoch
end
redis.call("HSET", group, unpack(fields))
if ARGV[3] ~= "" then
  -- Written with the update, in the group's slot: a failover loses both or neither.
  write_record(KEYS[3], epoch, ARGV[3], table.concat(new, ","), ARGV[8])
end
announce(ARGV[5], ARGV[6], incarnation, version, "u", changed)
return {0, unpack(new)}
