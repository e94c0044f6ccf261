-- rate_limit (included after the header of every command script): the app's calls
-- per second, counted in fixed one-second windows on Redis's own clock, so every
-- replica of the service shares one exact count. A count is a small integer, exact
-- as a Lua number. `limit` "0" means no limit is checked here.
local function over_rate_limit(key, limit)
  if limit == "0" then return false end
  local second = redis.call("TIME")[1]
  local calls
  if redis.call("HGET", key, "second") == second then
    calls = redis.call("HINCRBY", key, "calls", 1)
  else
    redis.call("HSET", key, "second", second, "calls", 1)
    redis.call("EXPIRE", key, 2)
    calls = 1
  end
  return calls > tonumber(limit)
end
