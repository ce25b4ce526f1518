-- Closed-loop load for the benchmarks here (proxy_transport.py, routes.py; wrk 4.x, LuaJIT).
-- Configured from the environment:
--   BENCH_METHOD          POST (default) or GET
--   BENCH_BODY            the JSON body of a POST
--   BENCH_AUTHORIZATION   an Authorization header sent with every request (optional)
--   BENCH_AUTHORIZATIONS  several, one a line: each request takes the next in turn (optional;
--                         then every request is built up front and picked per request)
-- Counts every non-2xx answer (wrk's own summary only counts status >= 400) and prints one
-- machine-readable line: "BENCH_RESULT {...json...}"; latencies are in microseconds.

wrk.method = os.getenv("BENCH_METHOD") or "POST"
if wrk.method == "POST" then
  wrk.body = os.getenv("BENCH_BODY") or '{"model": "grok-imagine-video-1-5", "prompt": "bench"}'
  wrk.headers["Content-Type"] = "application/json"
end
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end
local rotation = {}
for value in (os.getenv("BENCH_AUTHORIZATIONS") or ""):gmatch("[^\n]+") do
  table.insert(rotation, value)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local prepared = {}
local turn = 0

function init(args)
  responses = 0
  non2xx = 0
  for _, value in ipairs(rotation) do
    local headers = {}
    for name, header in pairs(wrk.headers) do
      headers[name] = header
    end
    headers["Authorization"] = value
    table.insert(prepared, wrk.format(nil, nil, headers))
  end
end

if #rotation > 0 then
  -- Defined only when rotating: a script with a request() function makes wrk call it for
  -- every request instead of re-sending one prepared request.
  function request()
    turn = turn % #prepared + 1
    return prepared[turn]
  end
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
