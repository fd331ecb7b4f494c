-- watch_sale: what the buyers following a sale's event stream would see
-- change, in one call. The API's push watcher (src/push.rs) runs it once per
-- interval for each sale that has streams open, however many there are;
-- each stream works out its own buyer's standing from it and from the
-- buyer's place, and asks Redis about its buyer only when the admissions
-- have reached that place (or for its periodic exact refresh).
--
-- The admission frontier is the highest place admitted so far: the last
-- entry of the admissions ledger that release_batch writes ("ms:lowest
-- place:highest place:count" per admitting tick). Admission is in place
-- order, so a buyer still in line whose place is at or below it has just
-- been admitted (or dropped as silent).
--
-- KEYS[1]  {sale:<id>}:meta
-- KEYS[2]  {sale:<id>}:waiting
-- KEYS[3]  {sale:<id>}:admissions
-- ARGV     none
-- Returns  {"gone"} when the sale is not in Redis, else
--          {"sale", frozen, sold_out, waitlist, paused, closed (each 0|1),
--           measured rate, release_rate, opens_at_ms, admitted_total,
--           frontier (highest place admitted; -1 before any), waiting}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'opens_at_ms', 'frozen', 'sold_out', 'waitlist', 'paused',
  'closes_at_ms', 'measured_rate', 'release_rate', 'admitted_total')
if not m[1] and m[2] ~= '1' then
  return {'gone'}
end
local flag = function(v) if v == '1' then return '1' end return '0' end
local closes = tonumber(m[6] or '0')
local closed = '0'
if closes > 0 and now >= closes then
  closed = '1'
end
local frontier = '-1'
local last = redis.call('LINDEX', KEYS[3], -1)
if last then
  frontier = string.match(last, '^%d+:%d+:(%d+):') or '-1'
end
return {'sale', flag(m[2]), flag(m[3]), flag(m[4]), flag(m[5]), closed, m[7] or '0', m[8] or '0',
  m[1] or '0', m[9] or '0', frontier, tostring(redis.call('ZCARD', KEYS[2]))}
