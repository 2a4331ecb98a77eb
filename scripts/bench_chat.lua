-- wrk script for scripts/bench: POSTs one chat completion body with headers, counts
-- non-2xx statuses and (for streams) bodies missing the final "data: [DONE]", and prints
-- one machine-readable BENCH_RESULT line that scripts/bench parses.
-- Environment: BENCH_BODY_FILE (request JSON), BENCH_AUTH (bearer token),
-- BENCH_PATH (default /v1/chat/completions), BENCH_STREAM=1 to check for [DONE],
-- BENCH_EXPECT (optional): a string every 2xx body must contain (relay's "metadata":).
-- BENCH_STAGGER_MS and BENCH_STAGGER_FIRST (optional): each thread's first BENCH_STAGGER_FIRST
-- requests (its connections' first ones) wait a random 0..BENCH_STAGGER_MS ms, so held
-- connections send evenly over time rather than in one wave; the wait is not in the latency.
-- BENCH_KEYS_FILE (optional): one bearer token a line (many funded accounts, one key each);
-- each request takes the next one, each thread starting at its own place in the list, so
-- the load spreads over every account instead of one hot account (BENCH_AUTH unused then).

local threads = {}

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_index", #threads)
end

function init(args)
  non2xx = 0
  bad_body = 0
  -- Each thread its own sequence, or every thread would stagger its connections alike.
  math.randomseed(os.time() + 7919 * (thread_index or 0))
  local body = read_file(os.getenv("BENCH_BODY_FILE"))
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_AUTH") or "")
  check_done = os.getenv("BENCH_STREAM") == "1"
  expect = os.getenv("BENCH_EXPECT") or ""
  local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
  request_bytes = wrk.format("POST", path, headers, body)
  -- Many keys: every request built once here, so request() stays a table lookup.
  by_key = {}
  local keys_file = os.getenv("BENCH_KEYS_FILE") or ""
  if keys_file ~= "" then
    for token in io.lines(keys_file) do
      if token ~= "" then
        headers["Authorization"] = "Bearer " .. token
        table.insert(by_key, wrk.format("POST", path, headers, body))
      end
    end
  end
  next_key = #by_key > 0 and ((thread_index or 1) * 7919) % #by_key or 0
end

function request()
  if #by_key == 0 then
    return request_bytes
  end
  next_key = next_key % #by_key + 1
  return by_key[next_key]
end

-- Defined only when asked for: with a delay() wrk puts every request through a timer.
local stagger_ms = tonumber(os.getenv("BENCH_STAGGER_MS") or "0")
if stagger_ms > 0 then
  local stagger_first = tonumber(os.getenv("BENCH_STAGGER_FIRST") or "0")
  local delayed = 0
  function delay()
    -- wrk asks before every request; a connection's first asks come before any answer.
    delayed = delayed + 1
    if delayed <= stagger_first then
      return math.random(0, stagger_ms)
    end
    return 0
  end
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
