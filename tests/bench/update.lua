-- wrk script: update_group_counter, Mode Increase, two keys (a += 1, b += 2), on a group
-- drawn at random from GROUPS, signed with the usersig in the environment.
-- Counts and reports as counting.lua says.
local groups = tonumber(os.getenv("BENCH_GROUPS") or "10000")
local path = "/v4/group_open_http_svc/update_group_counter?sdkappid=" .. os.getenv("BENCH_SDKAPPID")
  .. "&identifier=" .. os.getenv("BENCH_IDENTIFIER") .. "&usersig=" .. os.getenv("BENCH_USERSIG")
  .. "&random=12345&contenttype=json"
local headers = {["Content-Type"] = "application/json"}
-- counting.lua, beside this script: threads, acked/failed/sent, init, response and done.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "counting.lua")

function setup(thread)
  table.insert(threads, thread)
end

function request()
  sent = sent + 1
  local body = '{"GroupId":"bench-' .. math.random(0, groups - 1)
    .. '","Mode":"Increase","GroupCounter":[{"Key":"a","Value":1},{"Key":"b","Value":2}]}'
  return wrk.format("POST", path, headers, body)
end
