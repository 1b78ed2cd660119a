-- GET one record by a random id from ids.txt; PATH_PREFIX and TOKEN from the environment.
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local prefix = os.getenv("PATH_PREFIX")
local token = os.getenv("TOKEN")
local suffix = os.getenv("PATH_SUFFIX") or ""
math.randomseed(42)
request = function()
  local id = ids[math.random(#ids)]
  return wrk.format("GET", prefix .. id .. suffix, { ["Authorization"] = token })
end
done = function(summary, latency, requests)
  io.write(string.format('{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
