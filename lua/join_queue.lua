-- join_queue: put a buyer in a sale's virtual queue, once.
--
-- Joining twice keeps the first place. Before the sale opens, the place is the
-- buyer's pre-queue draw (an HMAC of the buyer id under the sale's secret
-- seed, computed by the caller as a number in [0, 1)), so the pre-queue is
-- in a random but reproducible order and refreshing early buys nothing. After
-- opening the place is the next value of a per-sale counter (1, 2, 3, ...),
-- first come first served behind the whole pre-queue. Never a clock.
--
-- KEYS[1]  {sale:<id>}:meta      (opens_at_ms, closes_at_ms, sold_out)
-- KEYS[2]  {sale:<id>}:waiting   zset buyer -> place
-- KEYS[3]  {sale:<id>}:arrivals  counter
-- KEYS[4]  {sale:<id>}:seen      zset buyer -> last poll ms
-- KEYS[5]  {sale:<id>}:joined    hash buyer -> join ms
-- KEYS[6]  {sale:<id>}:early     set of pre-queue buyers
-- KEYS[7]  {sale:<id>}:admitted  zset buyer -> pass deadline ms
-- KEYS[8]  {sale:<id>}:expired   set of buyers whose place lapsed
-- ARGV[1]  buyer id
-- ARGV[2]  pre-queue draw, a decimal in [0, 1)
-- Returns  a queue status as queue_status.lua does, or {"err", code}:
--          sale_not_found, sale_closed, sale_frozen (being restored)

local user = ARGV[1]
local draw = tonumber(ARGV[2])
if not draw or draw < 0 or draw >= 1 then
  return redis.error_reply('ERR join_queue: draw must be in [0, 1)')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local m = redis.call('HMGET', KEYS[1], 'opens_at_ms', 'closes_at_ms', 'sold_out',
  'measured_rate', 'release_rate', 'paused', 'pass_ttl_seconds', 'frozen')
if m[8] == '1' then
  return {'err', 'sale_frozen'}
end
if not m[1] then
  return {'err', 'sale_not_found'}
end
local opens, closes = tonumber(m[1]), tonumber(m[2])
if closes > 0 and now >= closes then
  return {'err', 'sale_closed'}
end

local deadline = redis.call('ZSCORE', KEYS[7], user)
if deadline and tonumber(deadline) > now then
  return {'admitted', deadline, m[7]}
end

local rank = redis.call('ZRANK', KEYS[2], user)
if not rank then
  if m[3] == '1' then
    return {'sold_out'}
  end
  local place
  if now < opens then
    place = draw
    redis.call('SADD', KEYS[6], user)
  else
    place = redis.call('INCR', KEYS[3])
  end
  redis.call('ZADD', KEYS[2], place, user)
  redis.call('HSET', KEYS[5], user, now)
  redis.call('SREM', KEYS[8], user)
  -- A new place replaces a lapsed admission.
  redis.call('ZREM', KEYS[7], user)
  rank = redis.call('ZRANK', KEYS[2], user)
end
redis.call('ZADD', KEYS[4], now, user)
if m[3] == '1' then
  return {'sold_out'}
end
return {'waiting', string.format('%d', rank + 1), m[4] or '0', m[5], m[6], m[1]}
