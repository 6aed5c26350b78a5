-- wrk script for bench/run.py's `refresh` extra: every request timed on its own.
-- usage: wrk -s wrk_refresh.lua http://PROXY_HOST:PROXY_PORT/ -- TARGET OUT
--   TARGET  the absolute URL sent as the request target to the forward proxy (absolute-form).
--   OUT     where each thread writes its records: OUT.1, OUT.2, ... one line per response:
--           "ID START END STATUS TOKEN" (START/END: CLOCK_MONOTONIC seconds, the clock of Python's
--           time.monotonic(); TOKEN: the upstream's X-Bench-Token, "-" when absent).
-- request() numbers each request (X-Bench-Id) and notes when wrk is about to write it (wrk calls it
-- right before the write of every request when it is defined); the upstream echoes the id, so
-- response() pairs the answer with its start. done() prints wrk's summary as WRKJSON, as
-- wrk_absolute.lua does. LuaJIT's ffi reads the clock.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local prefix, out, starts, n = nil, nil, {}, 0
function init(args)
  local target = args[1]
  local host = target:match("^%a+://([^/]+)")
  prefix = "GET " .. target .. " HTTP/1.1\r\nHost: " .. host .. "\r\nX-Bench-Id: "
  out = assert(io.open(args[2] .. "." .. tid, "w"))
  out:setvbuf("full", 65536)
end

function request()
  n = n + 1
  starts[n] = now()
  return prefix .. n .. "\r\n\r\n"
end

function response(status, headers, body)
  local t, id, token = now(), nil, "-"
  for k, v in pairs(headers) do
    local l = k:lower()
    if l == "x-bench-id" then
      id = tonumber(v)
    elseif l == "x-bench-token" then
      token = v
    end
  end
  local start = id and starts[id]
  if id then
    starts[id] = nil
  end
  out:write(string.format("%d %.6f %.6f %d %s\n", id or -1, start or -1, t, status, token))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
