-- wrk script for the hot endpoints: join, poll, hold.
-- Environment:
--   MODE    join | poll | hold
--   SALE    the sale id
--   BUYERS  file with one buyer a line: "<access token>" or, for hold,
--           "<access token> <queue pass>"
-- Each request takes the next buyer in the file (each thread starts at its
-- own offset), so joins are mostly fresh buyers and holds stay within the
-- per-user limit.

local mode = os.getenv("MODE")
local sale = os.getenv("SALE")
local buyers = {}
for line in io.lines(os.getenv("BUYERS")) do
  local token, pass = line:match("^(%S+)%s*(%S*)$")
  buyers[#buyers + 1] = { token = token, pass = pass }
end

local queue_path = "/v1/sales/" .. sale .. "/queue"
local hold_path = "/v1/sales/" .. sale .. "/reservations"
-- HOLD_BODY: the hold's body; "%d" in it stands for the buyer's line in the
-- file modulo 10 (load/bench_seats_http.sh spreads holds over ten zones).
local hold_body = os.getenv("HOLD_BODY") or '{"zone":"A","quantity":1}'
-- HOLD_SEATS=1: each hold asks for two seats no other asks for, two
-- neighbours in one of ten seated zones Z0..Z9 of 100 rows (R0..R99) of
-- 200 seats: 100,000 holds, each prepared once, the buyers in turn (one
-- wrk thread, -t1, so that no hold is sent twice).
local hold_seats = os.getenv("HOLD_SEATS") == "1"

-- Every request is formatted once, here, so that each request costs wrk a
-- table lookup: wrk shares the machine with the service, and formatting
-- requests in Lua on every call would take CPU the service then lacks.
local prepared = {}
if hold_seats then
  for k = 0, 99999 do
    local b = buyers[k % #buyers + 1]
    local pair = math.floor(k / 10)
    local row, seat = pair % 100, 2 * math.floor(pair / 100) + 1
    prepared[k + 1] = wrk.format("POST", hold_path, {
      ["Authorization"] = "Bearer " .. b.token,
      ["X-Queue-Pass"] = b.pass,
      ["Content-Type"] = "application/json",
    }, string.format('{"zone":"Z%d","seats":["R%d-%d","R%d-%d"]}', k % 10, row, seat, row, seat + 1))
  end
  buyers = {}
end
for n, b in ipairs(buyers) do
  if mode == "join" then
    prepared[n] = wrk.format("POST", queue_path, { ["Authorization"] = "Bearer " .. b.token })
  elseif mode == "poll" then
    prepared[n] = wrk.format("GET", queue_path, { ["Authorization"] = "Bearer " .. b.token })
  else
    prepared[n] = wrk.format("POST", hold_path, {
      ["Authorization"] = "Bearer " .. b.token,
      ["X-Queue-Pass"] = b.pass,
      ["Content-Type"] = "application/json",
    }, (hold_body:gsub("%%d", tostring(n % 10))))
  end
end
buyers = nil
local count = #prepared
local i = 0

function setup(thread)
  -- Each hold of exact seats is made once: no offset, no second round.
  thread:set("offset", hold_seats and 0 or math.random(0, count - 1))
end

request = function()
  i = i + 1
  if hold_seats and i > count then
    error("hot.lua: the 100,000 holds of exact seats are used up: shorten the run")
  end
  return prepared[((i + (offset or 0)) % count) + 1]
end

done = function(summary, latency, requests)
  -- The exact count, for load/instructions.sh.
  io.write(string.format("REQUESTS %d\n", summary.requests))
  io.write(string.format("RESULT %s %.0f req/s p50 %.2f ms p99 %.2f ms non2xx %d errors %d\n",
    mode, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
