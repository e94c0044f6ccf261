-- rate_limit (included after the header of every command script): the app's calls
-- per second, counted in fixed one-second windows on Redis's own clock, so every
-- replica of the service shares one exact count. A count is a small integer, exact
-- as a Lua number. `limit` "0" means no limit is checked here.
--
-- A Redis out of memory under `noeviction` refuses the count's write (redis.pcall
-- returns the refusal instead of ending the script): the call is then judged on the
-- count so far and goes on uncounted, so reads keep working while writes are refused
-- by their own write. Over the limit stays over.
local function over_rate_limit(key, limit)
  if limit == "0" then return false end
  local second = redis.call("TIME")[1]
  local window = redis.call("HMGET", key, "second", "calls")
  local counted
  if window[1] == second then
    counted = redis.pcall("HINCRBY", key, "calls", 1)
  else
    counted = redis.pcall("HSET", key, "second", second, "calls", 1)
    if type(counted) ~= "table" then
      redis.call("EXPIRE", key, 2)
      counted = 1
    end
  end
  if type(counted) == "table" then -- refused: judged on the calls counted so far
    local calls = window[1] == second and tonumber(window[2]) or 0
    return calls >= tonumber(limit)
  end
  return counted > tonumber(limit)
end
