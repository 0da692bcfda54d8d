-- wrk script for bench/run.sh: POSTs the JSON body in the file $WRK_BODY and,
-- when wrk finishes, prints one machine-readable line:
--   BENCH {"requests":N,"seconds":S,"rps":R,"p50_us":..,"p99_us":..,"errors":E,"ids":K}
-- With WRK_IDS=1 it also counts the distinct x-instance-id values it saw (a
-- response() callback makes wrk parse every response, so it is off for the
-- throughput runs).

local path = os.getenv("WRK_BODY") or error("set WRK_BODY to the request body's file")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

if os.getenv("WRK_IDS") == "1" then
  local seen = {}
  ids = ""
  function response(status, headers, body)
    local id = headers["x-instance-id"]
    if id and not seen[id] then
      seen[id] = true
      ids = ids .. id .. ","
    end
  end
end

function done(summary, latency, requests)
  local distinct = {}
  local count = 0
  for _, thread in ipairs(threads) do
    for id in string.gmatch(thread:get("ids") or "", "[^,]+") do
      if not distinct[id] then
        distinct[id] = true
        count = count + 1
      end
    end
  end
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'BENCH {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_us":%d,"p99_us":%d,"errors":%d,"non2xx":%d,"ids":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50), latency:percentile(99), errors, e.status, count))
end
