-- confirm_hold: turn a held reservation into a confirmed one and append it to
-- the sale's stream (the outbox) in the same atomic step.
--
-- Confirming twice answers the confirmed reservation again and appends
-- nothing. A hold whose deadline has passed is expired here and then, with its
-- tickets returned, so a late confirm can never keep tickets the sweeper is
-- about to give back.
--
-- KEYS[1]  {sale:<id>}:res:<rid>
-- KEYS[2]  {sale:<id>}:zones
-- KEYS[3]  {sale:<id>}:buyer:<uid>  the caller's buyer hash
-- KEYS[4]  {sale:<id>}:deadlines
-- KEYS[5]  {sale:<id>}:stream
-- KEYS[6]  {sale:<id>}:admitted  a confirmation finishes the buyer's turn:
--                                their pass is spent and frees its place
--                                among the active buyers
-- KEYS[7]  {sale:<id>}:meta      `frozen` (checked first: a sale being
--                                restored takes no write) and `seq`, the
--                                sale's stream sequence (see below)
-- KEYS[8]  {sale:<id>}:seats     the seated zones' index (lib/seats)
-- KEYS[9]  {sale:<id>}:seatmap   a seated zone's seats become sold
-- ARGV[1]  caller's user id (another user's reservation reads as not found)
-- ARGV[2]  payment reference ("" for none)
-- ARGV[3]  sale id
-- ARGV[4]  reservation id
-- Returns  {"ok", rid, zone, qty, status, expires_ms, created_ms,
--           confirmed_ms, cancelled_ms, replayed(0|1), seats ("A-7,A-8", or
--           "" in a general-admission zone)}
--       or {"err", code, expired_now(0|1)}: reservation_not_found,
--           hold_expired, reservation_cancelled, sale_frozen
--
-- Each stream entry carries `seq`, one more than the sale's last entry.
-- Postgres keeps the highest it has applied: a Redis whose `seq` is behind
-- it, or whose new entries reuse numbers Postgres already holds, has gone
-- back in time (a restart from an older file, a lagging replica promoted).

local uid, payment, sale, rid = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', KEYS[7], 'frozen') == '1' then
  return {'err', 'sale_frozen', '0'}
end
local r = redis.call('HMGET', KEYS[1], 'user', 'zone', 'qty', 'status',
  'expires_ms', 'created_ms', 'confirmed_ms', 'cancelled_ms', 'seats')
if not r[1] or r[1] ~= uid then
  return {'err', 'reservation_not_found', '0'}
end
local zone, qty, status, seats = r[2], tonumber(r[3]), r[4], r[9] or ''

if status == 'confirmed' then
  return {'ok', rid, zone, r[3], status, r[5], r[6], r[7] or '0', r[8] or '0', '1', seats}
elseif status == 'cancelled' then
  return {'err', 'reservation_cancelled', '0'}
elseif status == 'expired' then
  return {'err', 'hold_expired', '0'}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if now >= tonumber(r[5]) then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'expired_ms', now)
  return_tickets(KEYS[2], KEYS[3], zone, qty, KEYS[8], KEYS[9], seats)
  redis.call('ZREM', KEYS[4], rid)
  return {'err', 'hold_expired', '1'}
end

redis.call('HSET', KEYS[1], 'status', 'confirmed', 'confirmed_ms', now, 'payment_ref', payment)
redis.call('HINCRBY', KEYS[2], zone .. ':held', -qty)
redis.call('HINCRBY', KEYS[2], zone .. ':conf', qty)
redis.call('ZREM', KEYS[4], rid)
set_seats(KEYS[8], KEYS[9], KEYS[2], zone, seats, SEAT_SOLD)
local seq = redis.call('HINCRBY', KEYS[7], 'seq', 1)
redis.call('XADD', KEYS[5], '*', 'type', 'confirmed', 'id', rid, 'sale', sale,
  'zone', zone, 'user', uid, 'qty', r[3], 'at_ms', now, 'payment_ref', payment,
  'seq', seq, 'seats', seats)
redis.call('ZREM', KEYS[6], uid)
return {'ok', rid, zone, r[3], 'confirmed', r[5], r[6], tostring(now), '0', '0', seats}
