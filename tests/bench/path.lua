-- GET one fixed path (PATH) with TOKEN.
local path = os.getenv("PATH_FIXED")
local token = os.getenv("TOKEN")
request = function()
  return wrk.format("GET", path, { ["Authorization"] = token })
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
