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
-- One thread only: the names and keys are one sequence. Counts and reports as update.lua.
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

local threads = {}
acked, failed, sent = 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
  if #threads > 1 then error("commands.lua runs on one wrk thread (-t1)") end
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  local body, headers = build(sent)
  sent = sent + 1
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, body)
  if status == 200 and string.find(body, '"ErrorCode":0,', 1, true) then
    acked = acked + 1
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total_acked, total_failed, total_sent = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_acked = total_acked + thread:get("acked")
    total_failed = total_failed + thread:get("failed")
    total_sent = total_sent + thread:get("sent")
  end
  io.write(string.format(
    "BENCH acked=%d failed=%d requests=%d p50_us=%d p99_us=%d socket_errors=%d sent=%d\n",
    total_acked, total_failed, summary.requests, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    total_sent))
end
