-- release_batch: one tick of a sale's releaser. Admits the next buyers in
-- queue order, atomically, and does the queue's housekeeping.
--
-- Whether a tick is due is decided here, from Redis's own clock and the
-- sale's last tick, so any number of releaser replicas may call this as
-- often as they like: at most one call per release interval does anything.
--
-- A tick: (1) passes whose deadline passed stop counting as active (their
-- buyers' next poll says `expired`); (2) waiting buyers who stopped polling
-- for idle_ms lose their place; (3) the zones' stock decides `sold_out`
-- (nothing available and nothing held: held tickets may still come back);
-- (4) unless paused, not yet open, closed or sold out, admits
-- floor(credit) buyers, where credit grows by release_rate per second of
-- elapsed time (capped at one interval's worth, so a pause or an outage
-- never releases a burst), limited by max_active and by the stock: never more
-- active buyers than available tickets; (5) records the tick for the
-- measured admission rate that ETAs come from.
--
-- KEYS[1]  {sale:<id>}:meta      settings; this script writes last_tick_ms,
--                                credit, sold_out, admitted_total, measured_rate
-- KEYS[2]  {sale:<id>}:waiting
-- KEYS[3]  {sale:<id>}:seen
-- KEYS[4]  {sale:<id>}:joined
-- KEYS[5]  {sale:<id>}:admitted
-- KEYS[6]  {sale:<id>}:expired
-- KEYS[7]  {sale:<id>}:zones
-- KEYS[8]  {sale:<id>}:ticks
-- KEYS[9]  {sale:<id>}:admissions  one entry per admitting tick:
--                                  "ms:lowest place:highest place:count"
-- ARGV[1]  idle_ms: a waiting buyer silent this long loses the place
-- ARGV[2]  most buyers admitted in one tick (bounds the script's run time)
-- Returns  {"not_due"}, {"err", "sale_not_found"}, {"frozen"} (a sale being
--          restored takes no write, not even housekeeping), or
--          {"ticked", admitted, lapsed passes, abandoned, sold_out(0|1),
--           waiting, active, wait_ms of each admitted buyer ...}

local idle_ms, max_batch = tonumber(ARGV[1]), tonumber(ARGV[2])
if not idle_ms or idle_ms < 1 or not max_batch or max_batch < 1 then
  return redis.error_reply('ERR release_batch: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local m = redis.call('HMGET', KEYS[1], 'release_rate', 'release_interval_ms', 'max_active',
  'paused', 'opens_at_ms', 'closes_at_ms', 'last_tick_ms', 'credit', 'pass_ttl_seconds', 'frozen')
if not m[1] then
  return {'err', 'sale_not_found'}
end
if m[10] == '1' then
  return {'frozen'}
end
local rate, interval, max_active = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local paused, opens, closes = m[4] == '1', tonumber(m[5]), tonumber(m[6])
local last, credit, pass_ttl_ms = tonumber(m[7] or '0'), tonumber(m[8] or '0'), tonumber(m[9]) * 1000
if now < last + interval then
  return {'not_due'}
end
local elapsed = math.min(now - last, 2 * interval)

-- Each step below acts on all its buyers with one command per key, never
-- one per buyer: Redis runs nothing else while a script runs, and a tick
-- that drops a thousand idle buyers one call at a time held every other
-- request back for tens of milliseconds.

-- redis.call(cmd, key, list...) in slices: unpack puts its values on Lua's
-- stack, which holds at most 8000 (a tick may admit 5000 buyers, 10000
-- arguments to ZADD). The slices are even-sized, so pairs stay together;
-- an empty list makes no call at all.
local function call_with(cmd, key, list)
  local replies = {}
  for i = 1, #list, 1000 do
    local r = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    if type(r) == 'table' then
      for _, v in ipairs(r) do replies[#replies + 1] = v end
    end
  end
  return replies
end

-- (1) passes that lapsed
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1000)
call_with('ZREM', KEYS[5], lapsed)
call_with('SADD', KEYS[6], lapsed)

-- (2) abandoned places
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - idle_ms, 'LIMIT', 0, 1000)
call_with('ZREM', KEYS[2], gone)
call_with('ZREM', KEYS[3], gone)
call_with('HDEL', KEYS[4], gone)
call_with('SADD', KEYS[6], gone)

-- (3) stock
local avail, held = 0, 0
local z = redis.call('HGETALL', KEYS[7])
for i = 1, #z, 2 do
  local f = z[i]
  if string.sub(f, -6) == ':avail' then
    avail = avail + tonumber(z[i + 1])
  elseif string.sub(f, -5) == ':held' then
    held = held + tonumber(z[i + 1])
  end
end
local sold_out = avail == 0 and held == 0

-- (4) admission
local admitted, waits = 0, {}
local active = redis.call('ZCARD', KEYS[5])
if paused or now < opens or (closes > 0 and now >= closes) or sold_out then
  credit = 0
else
  local cap = math.max(1, rate * interval / 1000)
  credit = math.min(cap, credit + rate * elapsed / 1000)
  local n = math.floor(credit)
  if max_active > 0 then
    n = math.min(n, max_active - active)
  end
  n = math.min(n, avail - active, max_batch)
  if n > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[2], n)
    local deadline = now + pass_ttl_ms
    if #popped > 0 then
      redis.call('RPUSH', KEYS[9], now .. ':' .. popped[2] .. ':' .. popped[#popped] .. ':' .. (#popped / 2))
      local buyers, passes = {}, {}
      for i = 1, #popped, 2 do
        buyers[#buyers + 1] = popped[i]
        passes[#passes + 1] = deadline
        passes[#passes + 1] = popped[i]
      end
      call_with('ZADD', KEYS[5], passes)
      call_with('ZREM', KEYS[3], buyers)
      local joined = call_with('HMGET', KEYS[4], buyers)
      call_with('HDEL', KEYS[4], buyers)
      for i = 1, #buyers do
        waits[i] = tostring(now - tonumber(joined[i] or now))
      end
      admitted = #buyers
    end
    credit = credit - admitted
  end
end

-- (5) bookkeeping and the measured rate over the last ticks
redis.call('HSET', KEYS[1], 'last_tick_ms', now, 'credit', tostring(credit),
  'sold_out', sold_out and '1' or '0')
redis.call('HINCRBY', KEYS[1], 'admitted_total', admitted)
redis.call('RPUSH', KEYS[8], now .. ':' .. admitted)
redis.call('LTRIM', KEYS[8], -20, -1)
local ticks = redis.call('LRANGE', KEYS[8], 0, -1)
local first = tonumber(string.match(ticks[1], '^(%d+):'))
local sum = 0
for i = 2, #ticks do
  sum = sum + tonumber(string.match(ticks[i], ':(%d+)$'))
end
local measured = 0
if now > first then
  measured = sum * 1000 / (now - first)
end
redis.call('HSET', KEYS[1], 'measured_rate', string.format('%.3f', measured))

local reply = {'ticked', tostring(admitted), tostring(#lapsed), tostring(#gone),
  sold_out and '1' or '0', tostring(redis.call('ZCARD', KEYS[2])),
  tostring(active + admitted)}
for _, w in ipairs(waits) do
  reply[#reply + 1] = w
end
return reply
