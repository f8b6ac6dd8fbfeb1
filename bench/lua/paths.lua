-- Requests random paths from the file named by BENCH_PATHS (one a line), with a fixed seed,
-- and prints a JSON summary (throughput inputs, errors, latency percentiles in µs) when done.
local paths = {}
local file = assert(io.open(os.getenv("BENCH_PATHS"), "r"))
for line in file:lines() do
  if #line > 0 then paths[#paths + 1] = line end
end
file:close()

local requests_by_path = {}

function init(args)
  math.randomseed(tonumber(os.getenv("BENCH_SEED") or "1"))
  for i, path in ipairs(paths) do requests_by_path[i] = wrk.format("GET", path) end
end

function request()
  return requests_by_path[math.random(#requests_by_path)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
