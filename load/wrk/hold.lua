-- wrk script: POST a one-ticket hold per request, rotating over many buyers
-- so the per-user limit does not end the run.
-- Environment: SALE (sale id), TOKENS (file with one access token a line).

local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
  tokens[#tokens + 1] = line
end
local path = "/v1/sales/" .. os.getenv("SALE") .. "/reservations"
local body = '{"zone":"A","quantity":1}'
local i = 0

function setup(thread)
  thread:set("offset", math.random(1, #tokens))
end

request = function()
  i = i + 1
  local t = tokens[((i + (offset or 0)) % #tokens) + 1]
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. t,
    ["Content-Type"] = "application/json",
  }, body)
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  requests %d  errors(socket) %d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
