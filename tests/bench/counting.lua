-- Shared by the bench's wrk scripts (update.lua, commands.lua), which load it first. Counts
-- acknowledged calls (ErrorCode 0) so the run can check exactness afterwards, and the calls
-- sent (each script's request() adds to `sent`): wrk stops at its deadline with calls in
-- flight, whose outcome it never reads. done() prints one BENCH line, every thread's totals.
threads = {}
acked, failed, sent = 0, 0, 0

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
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
