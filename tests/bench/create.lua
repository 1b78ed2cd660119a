-- POST one new contact per request with a unique email (RUN tags the run).
-- With REQUESTS set, it stops after that many answers and creates DONE_FILE:
-- wrk's main thread sleeps out its -d regardless, so the harness then ends it
-- with SIGINT, and wrk reports the real elapsed time.
local path = os.getenv("PATH_FIXED")
local token = os.getenv("TOKEN")
local run = os.getenv("RUN")
local limit = tonumber(os.getenv("REQUESTS") or "0")
local n = 0
local answered = 0
request = function()
  n = n + 1
  local body = string.format('{"name":"Load %s %d","email":"load-%s-%d-%d@bench.example","stage":"lead"}', run, n, run, n, math.random(1000000000))
  return wrk.format("POST", path, { ["Authorization"] = token, ["Content-Type"] = "application/json" }, body)
end
response = function(status, headers, body)
  answered = answered + 1
  if limit > 0 and answered == limit then
    wrk.thread:stop()
    io.open(os.getenv("DONE_FILE"), "w"):close()
  end
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
