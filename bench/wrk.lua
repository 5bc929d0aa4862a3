-- bench/run --loadgen wrk: POSTs a body file with the given headers, and prints one JSON
-- line with what bench/bench.py reads from glmgate-load (latencies in microseconds).
-- wrk -s bench/wrk.lua URL -- BODY_FILE "name: value"...
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  for i = 2, #args do
    local name, value = args[i]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local seconds = summary.duration / 1e6
  local ok = summary.requests - e.status
  local function p(q) return latency:percentile(q) end
  io.write(string.format(
    '{"requests": %d, "sent": %d, "errors": %d, "rps": %.1f, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    ok, summary.requests, e.connect + e.read + e.write + e.timeout + e.status,
    ok / seconds, p(50), p(90), p(99), latency.max))
end
