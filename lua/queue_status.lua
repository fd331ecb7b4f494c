-- queue_status: where a buyer stands. The most frequent call of a sale, so it
-- is small: two ZSCOREs, a ZRANK (O(log n)) and, at most every few seconds
-- per buyer, one ZADD to record that the buyer is still there (the second
-- of the last poll is part of the place's score: lib/queue_place).
--
-- KEYS[1]  {sale:<id>}:meta      (sold_out, waitlist, closes_at_ms, frozen)
-- KEYS[2]  {sale:<id>}:waiting
-- KEYS[3]  {sale:<id>}:admitted
-- KEYS[4]  {sale:<id>}:expired
-- ARGV[1]  buyer id
-- ARGV[2]  how stale a last-seen mark may get before it is refreshed (ms)
-- Returns  {"waiting" | "waitlisted", position (1 = next), measured rate,
--           release_rate, paused, opens_at_ms, place, admitted_total} (the
--           last two let an event stream follow the line from the sale's
--           admissions alone: lua/watch_sale.lua), {"admitted", pass deadline
--           ms, pass_ttl_seconds}, {"sold_out"} (every ticket sold, or the
--           sale closed: final), {"expired"}, {"not_in_queue"}
--          or {"err", "sale_not_found"}, {"err", "sale_frozen"} (a waiting
--          buyer's poll writes the last-seen mark: a sale being restored
--          takes no write)

local user = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local deadline = redis.call('ZSCORE', KEYS[3], user)
if deadline then
  if tonumber(deadline) > now then
    local a = redis.call('HMGET', KEYS[1], 'pass_ttl_seconds', 'closes_at_ms')
    local closes = tonumber(a[2] or '0')
    if closes > 0 and now >= closes then
      return {'sold_out'}
    end
    return {'admitted', deadline, a[1]}
  end
  return {'expired'}
end

local score = redis.call('ZSCORE', KEYS[2], user)
local m = redis.call('HMGET', KEYS[1], 'sold_out', 'measured_rate', 'release_rate', 'paused',
  'opens_at_ms', 'frozen', 'waitlist', 'closes_at_ms', 'admitted_total')
local closes = tonumber(m[8] or '0')
local closed = closes > 0 and now >= closes
if not score then
  if redis.call('SISMEMBER', KEYS[4], user) == 1 then
    return {'expired'}
  end
  if not m[5] and m[6] ~= '1' then
    return {'err', 'sale_not_found'}
  end
  -- Told sold_out at join (so never queued), or queued when the sale ended.
  if m[1] == '1' or closed then
    return {'sold_out'}
  end
  return {'not_in_queue'}
end

if m[6] == '1' then
  return {'err', 'sale_frozen'}
end
if m[1] == '1' or closed then
  return {'sold_out'}
end
score = tonumber(score)
if unseen_ms(score, now) >= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], 'XX', score_text(score_at(place_of(score), now)), user)
end
local rank = redis.call('ZRANK', KEYS[2], user)
local state = 'waiting'
if m[7] == '1' then
  state = 'waitlisted'
end
return {state, string.format('%d', rank + 1), m[2] or '0', m[3], m[4], m[5],
  score_text(place_of(score)), m[9] or '0'}
