-- Shared by the scenario scripts of benches/http.rs (prepended to each one).
--
-- Each wrk thread gets a number (`tid`, 1-based) so that generated names never repeat across
-- threads. wrk counts only statuses from 400 up as errors; `response` counts every answer that
-- is not 2xx (a 307 from a node that is no longer the leader is not a write), and `done` prints
-- one machine-readable line that the benchmark parses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 with padding (etcd's JSON gateway takes keys and values as base64).
function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 1, 4 do
      local v = math.floor(n / 2 ^ (6 * (4 - k))) % 64
      chars[k] = alphabet:sub(v + 1, v + 1)
    end
    if not b then chars[3] = "=" end
    if not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

-- The write scripts: `counter` numbers this thread's requests, `prefix` (the first script
-- argument, then the thread) makes names unique.
counter = 0
prefix = "bench"

function init_writes(args)
  prefix = (args[1] or "bench") .. "-" .. tid .. "-"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

-- A product as the scraper produces it; `title` makes it unique.
function product_json(title, n)
  return string.format(
    '{"title":"%s","price":%d.99,"currency":"GBP","converted_price":%d.15,"converted_currency":"EUR",' ..
    '"availability":"In stock","rating":%d,"link":"https://books.toscrape.com/catalogue/%s/index.html"}',
    title, 10 + n % 90, 11 + n % 90, 1 + n % 5, title)
end

non2xx = 0
first_non2xx = ""

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_non2xx == "" then
      first_non2xx = status .. " " .. body:sub(1, 160):gsub('[%c"\\]', " ")
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local bad, example = 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    if example == "" then example = thread:get("first_non2xx") end
  end
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"example":"%s","status_errors":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, bad, example, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
