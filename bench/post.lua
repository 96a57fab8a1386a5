-- wrk script: POST one JSON sentence per request; print a JSON summary line at the end.
wrk.method = "POST"
wrk.body = '{"sentence": "I can not wait to see you all this weekend, it is going to be so much fun"}'
wrk.headers["Content-Type"] = "application/json"
-- Through the gateway (make bench): MLGATE_BENCH_AUTH holds "Basic <base64>".
local auth = os.getenv("MLGATE_BENCH_AUTH")
if auth and #auth > 0 then
  wrk.headers["Authorization"] = auth
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.6f, "rps": %.2f, "p50_ms": %.3f, "p90_ms": %.3f, '
    .. '"p99_ms": %.3f, "max_ms": %.3f, "errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, errors, summary.errors.status))
end
