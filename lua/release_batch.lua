-- release_batch: one tick of a sale's releaser. Admits the next buyers in
-- queue order, atomically, and does the queue's housekeeping.
--
-- Whether a tick is due is decided here, from Redis's own clock and the
-- sale's last tick, so any number of releaser replicas may call this as
-- often as they like: at most one call per release interval does anything.
--
-- A tick:
-- (1) passes whose deadline passed stop counting as admitted, and admitted
--     buyers who held nothing within admit_idle_ms lose the turn (their next
--     poll says `expired`);
-- (2) a slice of the waiting line is swept, from where the last tick left
--     off: buyers not seen for idle_ms lose their place (lib/queue_place:
--     the last-seen second is part of the score);
-- (3) the zones' stock decides the sale's state: `sold_out` when nothing is
--     available or held (final), `waitlist` when nothing is available but
--     held tickets may still come back;
-- (4) unless paused, not yet open, closed or without available stock,
--     admits floor(credit) buyers, where credit grows by release_rate per
--     second of elapsed time (capped at one interval's worth, so a pause or
--     an outage never releases a burst), limited by max_active, and by the
--     stock: buyers admitted and yet to hold (`turns`) never outnumber the
--     available tickets plus admit_headroom_percent of them. Buyers popped
--     who have not been seen for idle_ms are dropped instead of admitted;
-- (5) records the tick for the measured admission rate that ETAs come from.
--
-- KEYS[1]  {sale:<id>}:meta         settings; this script writes
--                                   last_tick_ms, credit, sold_out,
--                                   waitlist, admitted_total,
--                                   measured_rate, sweep_from
-- KEYS[2]  {sale:<id>}:waiting
-- KEYS[3]  {sale:<id>}:admitted     zset buyer -> pass deadline ms
-- KEYS[4]  {sale:<id>}:turns        zset admitted buyer yet to hold ->
--                                   hold-by ms
-- KEYS[5]  {sale:<id>}:expired
-- KEYS[6]  {sale:<id>}:zones
-- KEYS[7]  {sale:<id>}:ticks
-- KEYS[8]  {sale:<id>}:admissions   one entry per admitting tick:
--                                   "ms:lowest place:highest place:count"
-- KEYS[9]  {sale:<id>}:arrivals_ms  hash: arrival counter / 64 -> first ms
-- ARGV[1]  idle_ms: a waiting buyer silent this long loses the place
-- ARGV[2]  most buyers admitted in one tick (bounds the script's run time)
-- ARGV[3]  waiting buyers swept for silence in one tick
-- Returns  {"not_due"}, {"err", "sale_not_found"}, {"frozen"} (a sale being
--          restored takes no write, not even housekeeping), or
--          {"ticked", admitted, lapsed passes and lost turns, abandoned,
--           sold_out(0|1), waiting, admitted and active, waitlist(0|1),
--           wait_ms of each admitted buyer ...}

local idle_ms, max_batch, sweep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not idle_ms or idle_ms < 1 or not max_batch or max_batch < 1 or not sweep or sweep < 1 then
  return redis.error_reply('ERR release_batch: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local m = redis.call('HMGET', KEYS[1], 'release_rate', 'release_interval_ms', 'max_active',
  'paused', 'opens_at_ms', 'closes_at_ms', 'last_tick_ms', 'credit', 'pass_ttl_seconds', 'frozen',
  'admit_idle_ms', 'admit_headroom_percent', 'sweep_from')
if not m[1] then
  return {'err', 'sale_not_found'}
end
if m[10] == '1' then
  return {'frozen'}
end
local rate, interval, max_active = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
local paused, opens, closes = m[4] == '1', tonumber(m[5]), tonumber(m[6])
local last, credit, pass_ttl_ms = tonumber(m[7] or '0'), tonumber(m[8] or '0'), tonumber(m[9]) * 1000
local admit_idle_ms = tonumber(m[11] or '60000')
local headroom = tonumber(m[12] or '100')
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

-- (1) passes that lapsed, and turns not taken
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 1000)
call_with('ZREM', KEYS[3], lapsed)
call_with('ZREM', KEYS[4], lapsed)
call_with('SADD', KEYS[5], lapsed)
local idle = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)
call_with('ZREM', KEYS[4], idle)
call_with('ZREM', KEYS[3], idle)
call_with('SADD', KEYS[5], idle)

-- (2) a slice of the line swept for buyers gone silent
local gone = {}
local from = m[13] or '-inf'
local slice = redis.call('ZRANGE', KEYS[2], from, '+inf', 'BYSCORE', 'LIMIT', 0, sweep, 'WITHSCORES')
for i = 1, #slice, 2 do
  if unseen_ms(tonumber(slice[i + 1]), now) >= idle_ms then
    gone[#gone + 1] = slice[i]
  end
end
if #slice < 2 * sweep then
  from = '-inf'
else
  from = slice[#slice]
end
call_with('ZREM', KEYS[2], gone)
call_with('SADD', KEYS[5], gone)

-- (3) stock
local avail, held = 0, 0
local z = redis.call('HGETALL', KEYS[6])
for i = 1, #z, 2 do
  local f = z[i]
  if string.sub(f, -6) == ':avail' then
    avail = avail + tonumber(z[i + 1])
  elseif string.sub(f, -5) == ':held' then
    held = held + tonumber(z[i + 1])
  end
end
local sold_out = avail == 0 and held == 0
local waitlist = avail == 0 and held > 0

-- (4) admission
local admitted, waits = 0, {}
local active = redis.call('ZCARD', KEYS[3])
if paused or now < opens or (closes > 0 and now >= closes) or avail == 0 then
  credit = 0
else
  local cap = math.max(1, rate * interval / 1000)
  credit = math.min(cap, credit + rate * elapsed / 1000)
  local n = math.floor(credit)
  if max_active > 0 then
    n = math.min(n, max_active - active)
  end
  local room = avail + math.floor(avail * headroom / 100)
  n = math.min(n, room - redis.call('ZCARD', KEYS[4]), max_batch)
  local buyers, places = {}, {}
  -- Popped buyers gone silent are dropped, and more are popped in their
  -- place, a bounded number of times.
  for _ = 1, 4 do
    if #buyers >= n then
      break
    end
    local popped = redis.call('ZPOPMIN', KEYS[2], n - #buyers)
    if #popped == 0 then
      break
    end
    local silent = {}
    for i = 1, #popped, 2 do
      local score = tonumber(popped[i + 1])
      if unseen_ms(score, now) >= idle_ms then
        silent[#silent + 1] = popped[i]
      else
        buyers[#buyers + 1] = popped[i]
        places[#places + 1] = place_of(score)
      end
    end
    call_with('SADD', KEYS[5], silent)
    for _, b in ipairs(silent) do
      gone[#gone + 1] = b
    end
  end
  if #buyers > 0 then
    redis.call('RPUSH', KEYS[8], now .. ':' .. score_text(places[1]) .. ':' ..
      score_text(places[#places]) .. ':' .. #buyers)
    local deadline = now + pass_ttl_ms
    local hold_by = math.min(deadline, now + admit_idle_ms)
    local passes, turns = {}, {}
    for _, b in ipairs(buyers) do
      passes[#passes + 1] = deadline
      passes[#passes + 1] = b
      turns[#turns + 1] = hold_by
      turns[#turns + 1] = b
    end
    call_with('ZADD', KEYS[3], passes)
    call_with('ZADD', KEYS[4], turns)
    -- How long each waited: from opening for the pre-queue, else from the
    -- first arrival of its group of 64 (one HGET a group).
    local arrived = {}
    for i = 1, #buyers do
      local since = opens
      if places[i] >= AFTER_OPENING then
        local group = math.floor((places[i] - AFTER_OPENING) / 64)
        if arrived[group] == nil then
          arrived[group] = tonumber(redis.call('HGET', KEYS[9], group) or now)
        end
        since = arrived[group]
      end
      waits[i] = string.format('%d', math.max(0, now - since))
    end
    admitted = #buyers
    credit = credit - admitted
  end
end

-- (5) bookkeeping and the measured rate over the last ticks
redis.call('HSET', KEYS[1], 'last_tick_ms', now, 'credit', tostring(credit),
  'sold_out', sold_out and '1' or '0', 'waitlist', waitlist and '1' or '0', 'sweep_from', from)
redis.call('HINCRBY', KEYS[1], 'admitted_total', admitted)
redis.call('RPUSH', KEYS[7], now .. ':' .. admitted)
redis.call('LTRIM', KEYS[7], -20, -1)
local ticks = redis.call('LRANGE', KEYS[7], 0, -1)
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

local reply = {'ticked', tostring(admitted), tostring(#lapsed + #idle), tostring(#gone),
  sold_out and '1' or '0', tostring(redis.call('ZCARD', KEYS[2])),
  tostring(active + admitted), waitlist and '1' or '0'}
for _, w in ipairs(waits) do
  reply[#reply + 1] = w
end
return reply
