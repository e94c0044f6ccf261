-- wrk script for the rows of `make bench`'s "Every command" table: one workload per run,
-- chosen by BENCH_WORKLOAD, signed with the usersig in the environment.
--   get         get_group_counter, every counter of a group drawn from GROUPS
--   delete      delete_group_counter of Key "c" of a group drawn from GROUPS: never present,
--               so the counters the exactness check reads are left alone (ErrorCode 0 all
--               the same: docs/API.md §2, absent Keys are ignored)
--   idempotent  update_group_counter as update.lua (a += 1, b += 2), with a fresh
--               Idempotency-Key per call, BENCH_PREFIX then the call's number
--   create      create_group of BENCH_PREFIX .. n, n counting up from BENCH_START
--   destroy     destroy_group of BENCH_PREFIX .. n, n counting up from BENCH_START: groups
--               the bench created before the run (tests/bench/rows.py, GroupPool)
-- One thread only: the names and keys are one sequence. Counts and reports as counting.lua says.
local workload = os.getenv("BENCH_WORKLOAD")
local groups = tonumber(os.getenv("BENCH_GROUPS") or "10000")
local prefix = os.getenv("BENCH_PREFIX") or ""
local start = tonumber(os.getenv("BENCH_START") or "0")
local query = "?sdkappid=" .. os.getenv("BENCH_SDKAPPID") .. "&identifier=" .. os.getenv("BENCH_IDENTIFIER")
  .. "&usersig=" .. os.getenv("BENCH_USERSIG") .. "&random=12345&contenttype=json"
local json = {["Content-Type"] = "application/json"}

local function random_group()
  return '"GroupId":"bench-' .. math.random(0, groups - 1) .. '"'
end

local function numbered_group(n)
  return '"GroupId":"' .. prefix .. (start + n) .. '"'
end

local update = ',"Mode":"Increase","GroupCounter":[{"Key":"a","Value":1},{"Key":"b","Value":2}]'

-- Each workload: its command, and the body and headers of the run's call number n.
local workloads = {
  get = {"get_group_counter", function(n) return "{" .. random_group() .. "}", json end},
  delete = {"delete_group_counter", function(n)
    return "{" .. random_group() .. ',"GroupCounterKeys":["c"]}', json
  end},
  idempotent = {"update_group_counter", function(n)
    return "{" .. random_group() .. update .. "}",
      {["Content-Type"] = "application/json", ["Idempotency-Key"] = prefix .. n}
  end},
  create = {"create_group", function(n)
    return '{"Type":"Public","Name":"bench",' .. numbered_group(n) .. "}", json
  end},
  destroy = {"destroy_group", function(n) return "{" .. numbered_group(n) .. "}", json end},
}
local chosen = workloads[workload]
if chosen == nil then error("BENCH_WORKLOAD must be get, delete, idempotent, create or destroy") end
local path = "/v4/group_open_http_svc/" .. chosen[1] .. query
local build = chosen[2]

-- counting.lua, beside this script: threads, acked/failed/sent, init, response and done.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "counting.lua")

function setup(thread)
  table.insert(threads, thread)
  if #threads > 1 then error("commands.lua runs on one wrk thread (-t1)") end
end

function request()
  local body, headers = build(sent)
  sent = sent + 1
  return wrk.format("POST", path, headers, body)
end
