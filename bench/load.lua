-- wrk script for bench/run: rotates through the users' tokens and prints its results as JSON.
--
-- Read from the environment (bench/wrk.py sets them):
--   BENCH_METHOD   GET or POST
--   BENCH_PATH     path and query, e.g. /api/generate
--   BENCH_BODY     JSON body, or empty for none
--   BENCH_TOKENS   a file with one access token a line (none: no Authorization header)
--   BENCH_THREADS  wrk's thread count, to start each thread at another user
--   BENCH_HEADERS  more headers, one "Name: value" a line (e.g. Prefer: respond-async), or empty
--
-- Every request is formatted once in init(); request() only hands out the next one, so the
-- load generator spends its CPU on sending, not on building strings.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body = os.getenv("BENCH_BODY")
if body == "" then body = nil end
local tokens_file = os.getenv("BENCH_TOKENS")
if tokens_file == "" then tokens_file = nil end
local thread_count = tonumber(os.getenv("BENCH_THREADS") or "1")
local extra_headers = {}
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
    local name, value = line:match("^%s*([^:]+):%s*(.-)%s*$")
    if name then extra_headers[name] = value end
end

-- setup() runs in the main Lua state, once per thread: number the threads.
local next_thread_id = 0
function setup(thread)
    thread:set("thread_id", next_thread_id)
    next_thread_id = next_thread_id + 1
end

local requests = {}
local position = 0

local function format(token)
    local headers = { Host = wrk.headers["Host"] }
    if body then headers["Content-Type"] = "application/json" end
    if token then headers["Authorization"] = "Bearer " .. token end
    for name, value in pairs(extra_headers) do headers[name] = value end
    return wrk.format(method, path, headers, body)
end

function init(args)
    if tokens_file then
        for line in io.lines(tokens_file) do
            if line ~= "" then requests[#requests + 1] = format(line) end
        end
        if #requests == 0 then error("no tokens in " .. tokens_file) end
    else
        requests[1] = format(nil)
    end
    -- Spread the threads over the users so that they do not walk in step.
    position = math.floor((thread_id or 0) * #requests / thread_count) % #requests
end

function request()
    position = position % #requests + 1
    return requests[position]
end

-- done() runs once, in the main state, after the run: one line for bench/wrk.py to parse.
function done(summary, latency, _)
    local e = summary.errors
    io.write(string.format(
        'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
        '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
        '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency.mean, latency.max))
end
