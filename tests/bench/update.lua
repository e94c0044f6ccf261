-- wrk script: update_group_counter, Mode Increase, two keys (a += 1, b += 2), on a group
-- drawn at random from GROUPS, signed with the usersig in the environment.
-- Counts acknowledged calls (ErrorCode 0) so the run can check exactness afterwards, and the
-- calls sent: wrk stops at its deadline with calls in flight, whose outcome it never reads.
local groups = tonumber(os.getenv("BENCH_GROUPS") or "10000")
local path = "/v4/group_open_http_svc/update_group_counter?sdkappid=" .. os.getenv("BENCH_SDKAPPID")
  .. "&identifier=" .. os.getenv("BENCH_IDENTIFIER") .. "&usersig=" .. os.getenv("BENCH_USERSIG")
  .. "&random=12345&contenttype=json"
local headers = {["Content-Type"] = "application/json"}
local threads = {}
acked, failed, sent = 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end

function request()
  sent = sent + 1
  local body = '{"GroupId":"bench-' .. math.random(0, groups - 1)
    .. '","Mode":"Increase","GroupCounter":[{"Key":"a","Value":1},{"Key":"b","Value":2}]}'
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
