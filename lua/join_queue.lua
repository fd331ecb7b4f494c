-- join_queue: put a buyer in a sale's virtual queue, once.
--
-- Joining twice keeps the first place. Before the sale opens, the place is
-- the buyer's pre-queue draw (an HMAC of the buyer id under the sale's secret
-- seed, computed by the caller as a number in [0, 1)), so the pre-queue is
-- in a random but reproducible order and refreshing early buys nothing. After
-- opening the place is the next value of a per-sale counter, first come first
-- served behind the whole pre-queue. Never a clock. (lib/queue_place: how a
-- place is scored.)
--
-- A sold-out sale takes nobody: the answer is sold_out, and so is every
-- poll after it. A sale whose tickets are all held (some may come back)
-- takes the buyer onto its waitlist: a place like any other, reported as
-- waitlisted until tickets are available again.
--
-- KEYS[1]  {sale:<id>}:meta         (opens_at_ms, closes_at_ms, sold_out,
--                                   waitlist, frozen)
-- KEYS[2]  {sale:<id>}:waiting      zset buyer -> scored place
-- KEYS[3]  {sale:<id>}:arrivals     counter
-- KEYS[4]  {sale:<id>}:arrivals_ms  hash: arrival counter / 64 -> first ms
--                                   (how long admitted buyers waited)
-- KEYS[5]  {sale:<id>}:prequeue     list of buyers who joined before opening
--                                   (the organizer's export)
-- KEYS[6]  {sale:<id>}:admitted     zset buyer -> pass deadline ms
-- KEYS[7]  {sale:<id>}:expired      set of buyers whose place lapsed
-- KEYS[8]  {sale:<id>}:turns        zset admitted buyer -> hold-by ms
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
  'measured_rate', 'release_rate', 'paused', 'pass_ttl_seconds', 'frozen', 'waitlist')
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

local deadline = redis.call('ZSCORE', KEYS[6], user)
if deadline and tonumber(deadline) > now then
  return {'admitted', deadline, m[7]}
end

local score = redis.call('ZSCORE', KEYS[2], user)
if score then
  -- Joining again is being seen.
  redis.call('ZADD', KEYS[2], 'XX', score_text(score_at(place_of(tonumber(score)), now)), user)
else
  if m[3] == '1' then
    return {'sold_out'}
  end
  local place
  if now < opens then
    place = math.floor(draw * AFTER_OPENING)
    redis.call('RPUSH', KEYS[5], user)
  else
    local arrival = redis.call('INCR', KEYS[3])
    redis.call('HSETNX', KEYS[4], math.floor(arrival / 64), now)
    place = AFTER_OPENING + arrival
  end
  redis.call('ZADD', KEYS[2], score_text(score_at(place, now)), user)
  redis.call('SREM', KEYS[7], user)
  -- A new place replaces a lapsed admission.
  redis.call('ZREM', KEYS[6], user)
  redis.call('ZREM', KEYS[8], user)
end
local rank = redis.call('ZRANK', KEYS[2], user)
if m[3] == '1' then
  return {'sold_out'}
end
local state = 'waiting'
if m[9] == '1' then
  state = 'waitlisted'
end
return {state, string.format('%d', rank + 1), m[4] or '0', m[5], m[6], m[1]}
