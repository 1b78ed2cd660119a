-- POST one new contact per request with a unique email (RUN tags the run).
local path = os.getenv("PATH_FIXED")
local token = os.getenv("TOKEN")
local run = os.getenv("RUN")
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"name":"Load %s %d","email":"load-%s-%d-%d@bench.example","stage":"lead"}', run, n, run, n, math.random(1000000000))
  return wrk.format("POST", path, { ["Authorization"] = token, ["Content-Type"] = "application/json" }, body)
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
