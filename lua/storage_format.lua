--[[ storage_format: read, or write, the marker of the format this Redis's data is in.

Why a marker: a release reads the format it was written for. A service checks the
marker before it serves and refuses data in a format it cannot read; `python -m service
upgrade` moves data to the current format and writes the marker last, so a service
never serves half-upgraded data.

KEYS[1]  the marker, {storage-format}
ARGV[1]  "" to read only; else the format to write
ARGV[2]  "absent": write only when no marker is there (a new, empty store);
         "always": write whatever is there (the upgrade, once it has finished);
         "remove": remove the marker (a downgrade to format 1, which has none, once done)

Reply    {format}  the format the marker holds after the call, a decimal string
         {}        there is no marker
]]
if ARGV[2] == "remove" then
  redis.call("DEL", KEYS[1])
elseif ARGV[1] ~= "" then
  if ARGV[2] == "always" then
    redis.call("SET", KEYS[1], ARGV[1])
  else
    redis.call("SET", KEYS[1], ARGV[1], "NX")
  end
end
local held = redis.call("GET", KEYS[1])
if held then return {held} end
return {}
