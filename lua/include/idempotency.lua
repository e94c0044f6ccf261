-- idempotency (included after the header of the scripts that record their outcome):
-- a record is "<epoch>\n<fingerprint>\n<outcome>", kept `idempotency_ttl` seconds (24 h by
-- default), in the group's slot.
-- It is replayed only while the group holds the epoch it names: a destroyed group
-- (no epoch) or a re-created one (another epoch) makes it a stranger, ignored and
-- then overwritten. A record of before epochs, "<fingerprint>\n<outcome>", is
-- honoured while the group has no epoch, for the 24 h such records live.
--
-- replay_record: the recorded outcome (a string) of an identical request; false when
-- the key was first used with another request; nil when there is nothing to replay.
local function replay_record(record_key, epoch, fingerprint)
  local record = redis.call("GET", record_key)
  if not record then return nil end
  local body
  if epoch and string.sub(record, 1, #epoch + 1) == epoch .. "\n" then
    body = string.sub(record, #epoch + 2)
  elseif not epoch and string.find(record, "^%x+\n") == 1
      and #string.match(record, "^%x+") == #fingerprint then
    body = record -- from before epochs
  else
    return nil
  end
  if string.sub(body, 1, #fingerprint + 1) ~= fingerprint .. "\n" then return false end
  return string.sub(body, #fingerprint + 2)
end

local function write_record(record_key, epoch, fingerprint, outcome, seconds)
  redis.call("SET", record_key, epoch .. "\n" .. fingerprint .. "\n" .. outcome, "EX", seconds)
end
