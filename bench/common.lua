-- Shared by the wrk scripts of bench/run. Each script defines `make(i)` returning
-- method, path, body for a random index i in [0, BENCH_N) and calls bench.setup(make).
-- Environment: BENCH_KEY (bearer key), BENCH_N (ids to pick from, default 10000),
-- BENCH_DELAY_MS (optional mean pause in ms between a response and the connection's
-- next request, used to hold a rate below the peak; fractional values are honoured on
-- average by mixing the two neighbouring whole milliseconds).
local bench = {}

local key = os.getenv("BENCH_KEY") or ""
local n = tonumber(os.getenv("BENCH_N") or "10000")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")
-- Requests are formatted once per thread in init when there are at most this many
-- distinct ones, so the load generator spends its time on the network rather than on
-- building strings (wrk's client CPU per request drops by about a fifth); past it, each
-- request is built when sent.
local PREBUILT_MAX = 100000

function bench.setup(make)
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Content-Type"] = "application/json"

  local prebuilt = nil

  function init(args)
    -- a distinct seed per thread: address of a fresh table plus the clock
    local addr = tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0
    math.randomseed(os.time() + addr % 1000003)
    for _ = 1, 10 do math.random() end
    if n <= PREBUILT_MAX then
      prebuilt = {}
      for i = 0, n - 1 do
        local method, path, body = make(i)
        prebuilt[i + 1] = wrk.format(method, path, nil, body)
      end
    end
  end

  function request()
    local i = math.random(0, n - 1)
    if prebuilt then return prebuilt[i + 1] end
    local method, path, body = make(i)
    return wrk.format(method, path, nil, body)
  end

  if delay_ms and delay_ms > 0 then
    local lo = math.floor(delay_ms)
    local frac = delay_ms - lo
    function delay()
      if math.random() < frac then return lo + 1 end
      return lo
    end
  end

  -- One machine-readable line for bench/run (latencies in ms).
  function done(summary, latency, requests)
    local e = summary.errors
    local secs = summary.duration / 1e6
    io.write(string.format(
      'BENCH_JSON {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,' ..
      '"p99_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,"errors_connect":%d,"errors_read":%d,' ..
      '"errors_write":%d,"errors_timeout":%d,"non_2xx":%d}\n',
      summary.requests, secs, summary.requests / secs, latency:percentile(50) / 1000,
      latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
      latency.mean / 1000, e.connect, e.read, e.write, e.timeout, e.status))
  end
end

return bench
