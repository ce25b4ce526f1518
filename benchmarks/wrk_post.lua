-- Closed-loop POST load for benchmarks/proxy_transport.py (wrk 4.x, LuaJIT).
-- Configured from the environment: BENCH_BODY (JSON body), BENCH_AUTHORIZATION (optional).
-- Counts every non-2xx answer (wrk's own summary only counts status >= 400) and prints one
-- machine-readable line: "BENCH_RESULT {...json...}"; latencies are in microseconds.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model": "grok-imagine-video-1-5", "prompt": "bench"}'
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  responses = 0
  non2xx = 0
end

function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total_responses, total_non2xx = 0, 0
  for _, thread in ipairs(threads) do
    total_responses = total_responses + thread:get("responses")
    total_non2xx = total_non2xx + thread:get("non2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "responses": %d, "duration_us": %d, "non2xx": %d, '
      .. '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, total_responses, summary.duration, total_non2xx,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max
  ))
end
