-- wrk script: requests come from a file of JSON bodies (one per line), split between wrk's threads,
-- each body sent once; the summary is printed as one JSON line for the harness to read.
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  path, method, route, nthreads = args[1], args[2], args[3], tonumber(args[4])
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[5]}
  bodies = {}
  if path ~= "-" then
    local i = 0
    for line in io.lines(path) do
      if i % nthreads == tid then table.insert(bodies, line) end
      i = i + 1
    end
  end
  idx = 0
end

function request()
  idx = idx + 1
  local body = nil
  if #bodies > 0 then body = bodies[(idx - 1) % #bodies + 1] end
  return wrk.format(method, route, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
