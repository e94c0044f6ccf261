--[[ end_user_limit: count one call of an end user against their limit, on its own.

Why one script: replicas counting the same end user at once must never lose a call,
so the platform's client limit (reads and writes per identifier per 5 s) is exact
across replicas. Fixed windows on Redis's own clock; a count is a small integer,
exact as a Lua number. An out-of-memory Redis (noeviction) refuses the count: the
call is then judged on the count so far (as the app's rate limit is).

KEYS[1]  the end user's window, {enduser:<sdkappid>:<escaped identifier>}
ARGV[1]  "reads" or "writes": which count this call is in
ARGV[2]  the limit of that count per window
ARGV[3]  the window's length in seconds

Reply    {0}      within the limit
         {61007}  over the limit
]]
local now = tonumber(redis.call("TIME")[1])
local window = tostring(now - now % tonumber(ARGV[3]))
local held = redis.call("HMGET", KEYS[1], "window", ARGV[1])
local counted
if held[1] == window then
  counted = redis.pcall("HINCRBY", KEYS[1], ARGV[1], 1)
else
  counted = redis.pcall("HSET", KEYS[1], "window", window, "reads", 0, "writes", 0, ARGV[1], 1)
  if type(counted) ~= "table" then
    redis.call("EXPIRE", KEYS[1], 2 * tonumber(ARGV[3]))
    counted = 1
  end
end
if type(counted) == "table" then -- refused (out of memory): judged on the count so far
  local calls = held[1] == window and tonumber(held[2]) or 0
  if calls >= tonumber(ARGV[2]) then return {61007} end
  return {0}
end
if counted > tonumber(ARGV[2]) then return {61007} end
return {0}
