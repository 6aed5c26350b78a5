-- wrk script for bench/run.py.
-- usage: wrk -s wrk_absolute.lua http://CONNECT_HOST:CONNECT_PORT/ -- TARGET [AUTH]
--   TARGET  "-": origin-form, the path of the URL wrk was given (direct to the upstream);
--           an absolute URL: sent as the request target, absolute-form, to a forward proxy
--           (GET http://127.0.0.1:UP/small.txt HTTP/1.1, Host: 127.0.0.1:UP).
--   AUTH    Authorization value the client sets itself (direct baseline only); "-" or absent: none.
-- No request() function is defined, so wrk builds the request once (after init) and reuses
-- it: the Lua VM stays off the hot path. done() prints one machine-readable line:
-- "WRKJSON {...}". "status" is wrk's count of responses with a status > 399 (3xx are not counted).
function init(args)
  local target, auth = args[1], args[2]
  if target and target ~= "-" then
    wrk.path = target
    wrk.headers["Host"] = target:match("^%a+://([^/]+)")
  end
  if auth and auth ~= "-" then
    wrk.headers["Authorization"] = auth
  end
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
