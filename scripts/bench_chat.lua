-- wrk script for scripts/bench: POSTs one chat completion body with headers, counts
-- non-2xx statuses and (for streams) bodies missing the final "data: [DONE]", and prints
-- one machine-readable BENCH_RESULT line that scripts/bench parses.
-- Environment: BENCH_BODY_FILE (request JSON), BENCH_AUTH (bearer token),
-- BENCH_PATH (default /v1/chat/completions), BENCH_STREAM=1 to check for [DONE],
-- BENCH_EXPECT (optional): a string every 2xx body must contain (relay's "metadata":).

local threads = {}

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non2xx = 0
  bad_body = 0
  local body = read_file(os.getenv("BENCH_BODY_FILE"))
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_AUTH") or "")
  check_done = os.getenv("BENCH_STREAM") == "1"
  expect = os.getenv("BENCH_EXPECT") or ""
  request_bytes = wrk.format("POST", os.getenv("BENCH_PATH") or "/v1/chat/completions",
    headers, body)
end

function request()
  return request_bytes
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif check_done and not string.find(body, "data: [DONE]", 1, true) then
    bad_body = bad_body + 1
  elseif expect ~= "" and not string.find(body, expect, 1, true) then
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local total_non2xx = 0
  local total_bad = 0
  for _, thread in ipairs(threads) do
    total_non2xx = total_non2xx + thread:get("non2xx")
    total_bad = total_bad + thread:get("bad_body")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"non2xx":%d,"bad_body":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, total_non2xx, total_bad, e.connect, e.read,
    e.write, e.timeout))
end
