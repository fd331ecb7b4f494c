-- cancel_reservation: give a held or confirmed reservation's tickets back.
--
-- A held reservation simply releases its hold. A confirmed one is also
-- appended to the stream, so Postgres records the cancellation. Cancelling
-- twice answers the cancelled reservation again. A hold past its deadline is
-- expired here instead (its tickets go back just the same) and reported as
-- hold_expired.
--
-- KEYS[1]  {sale:<id>}:res:<rid>
-- KEYS[2]  {sale:<id>}:zones
-- KEYS[3]  {sale:<id>}:buyer:<uid>  the caller's buyer hash
-- KEYS[4]  {sale:<id>}:deadlines
-- KEYS[5]  {sale:<id>}:stream
-- KEYS[6]  {sale:<id>}:meta    `frozen` (checked first) and `seq`, the
--                              sale's stream sequence (see confirm_hold)
-- KEYS[7]  {sale:<id>}:admitted  zset buyer -> pass deadline: a buyer who
--                              cancels a hold and holds nothing else has
--                              admit_idle_ms (meta) left to hold again, then
--                              the turn ends, like an admitted buyer's who
--                              never holds
-- KEYS[8]  {sale:<id>}:seats    the seated zones' index (lib/seats)
-- KEYS[9]  {sale:<id>}:seatmap  a seated zone's seats become free
-- ARGV[1]  caller's user id (another user's reservation reads as not found)
-- ARGV[2]  sale id
-- ARGV[3]  reservation id
-- Returns  {"ok", rid, zone, qty, status, expires_ms, created_ms,
--           confirmed_ms, cancelled_ms, replayed(0|1), seats ("A-7,A-8", or
--           "" in a general-admission zone)}
--       or {"err", code, expired_now(0|1)}: reservation_not_found, hold_expired,
--           sale_frozen
--
-- A cancellation's stream entry also carries the confirmation's time, so
-- that Postgres can record it in full even when it arrives before the
-- confirmation itself (two sink replicas apply entries in any order).

local uid, sale, rid = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[6], 'frozen') == '1' then
  return {'err', 'sale_frozen', '0'}
end
local r = redis.call('HMGET', KEYS[1], 'user', 'zone', 'qty', 'status',
  'expires_ms', 'created_ms', 'confirmed_ms', 'cancelled_ms', 'seats')
if not r[1] or r[1] ~= uid then
  return {'err', 'reservation_not_found', '0'}
end
local zone, qty, status, seats = r[2], tonumber(r[3]), r[4], r[9] or ''

if status == 'cancelled' then
  return {'ok', rid, zone, r[3], status, r[5], r[6], r[7] or '0', r[8] or '0', '1', seats}
elseif status == 'expired' then
  return {'err', 'hold_expired', '0'}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if status == 'held' then
  return_tickets(KEYS[2], KEYS[3], zone, qty, KEYS[8], KEYS[9], seats)
  redis.call('ZREM', KEYS[4], rid)
  if now >= tonumber(r[5]) then
    redis.call('HSET', KEYS[1], 'status', 'expired', 'expired_ms', now)
    return {'err', 'hold_expired', '1'}
  end
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_ms', now)
  if tonumber(redis.call('HGET', KEYS[3], 'tickets') or '0') == 0 then
    local pass = redis.call('ZSCORE', KEYS[7], uid)
    local idle = tonumber(redis.call('HGET', KEYS[6], 'admit_idle_ms') or '60000')
    if pass and tonumber(pass) > now + idle then
      redis.call('ZADD', KEYS[7], 'XX', now + idle, uid)
    end
  end
  return {'ok', rid, zone, r[3], 'cancelled', r[5], r[6], '0', tostring(now), '0', seats}
end

-- confirmed
redis.call('HINCRBY', KEYS[2], zone .. ':conf', -qty)
redis.call('HINCRBY', KEYS[2], zone .. ':avail', qty)
redis.call('HINCRBY', KEYS[3], 'tickets', -qty)
set_seats(KEYS[8], KEYS[9], KEYS[2], zone, seats, SEAT_FREE)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_ms', now)
local seq = redis.call('HINCRBY', KEYS[6], 'seq', 1)
redis.call('XADD', KEYS[5], '*', 'type', 'cancelled', 'id', rid, 'sale', sale,
  'zone', zone, 'user', uid, 'qty', r[3], 'at_ms', now, 'confirmed_ms', r[7],
  'seq', seq, 'seats', seats)
return {'ok', rid, zone, r[3], 'cancelled', r[5], r[6], r[7], tostring(now), '0', seats}
