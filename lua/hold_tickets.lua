-- hold_tickets: check and deduct a zone's stock for one buyer, atomically.
--
-- Everything a hold depends on is decided here, in one step: the sale is
-- open, the zone exists, the idempotency key (if any) replays or is refused,
-- the per-user limit (held + confirmed, for the life of the sale) is kept,
-- and the zone has the stock. All checks run before the first write, because
-- a Lua error does not roll back what was already written.
--
-- The reservation id is chosen by the caller: 128 random bits, or with an
-- idempotency key 128 bits drawn from (user, key), so a retry lands on the
-- same reservation key and is answered from it. Without a key the id is
-- fresh, and the reservation is written without first reading it: no two
-- holds meet on 128 random bits.
--
-- KEYS[1]  {sale:<id>}:meta        sale settings (opens_at_ms, closes_at_ms,
--                                  per_user_limit, hold_ttl_ms)
-- KEYS[2]  {sale:<id>}:zones       zone counters
-- KEYS[3]  {sale:<id>}:res:<rid>   the reservation to create (or replay)
-- KEYS[4]  {sale:<id>}:buyer:<uid> the buyer: 'tickets' held + confirmed,
--                                  and a field per reservation id
-- KEYS[5]  {sale:<id>}:deadlines   zset rid -> hold deadline (ms)
-- KEYS[6]  {sale:<id>}:admitted    zset buyer -> queue pass deadline (ms):
--                                  the pass's signature was checked by the
--                                  caller; here it must still be admitted
-- KEYS[7]  {sale:<id>}:turns       zset admitted buyer yet to hold: a hold
--                                  takes the buyer out of it (the turn is
--                                  used)
-- ARGV[1]  user id
-- ARGV[2]  zone code
-- ARGV[3]  quantity, a whole number >= 1 written plainly ("2", not "2.0")
-- ARGV[4]  reservation id
-- ARGV[5]  request fingerprint when an idempotency key was given, else ""
-- Returns  {"new", expires_ms, created_ms} for a fresh hold (the caller knows
--           the rest: id, zone, quantity, status held),
--       or {"ok", rid, zone, qty, status, expires_ms, created_ms,
--           confirmed_ms, cancelled_ms, replayed(0|1)} for a replay,
--       or {"err", code, number}: sale_not_found, sale_not_open (1 = not yet
--           open, 2 = closed), zone_not_found, invalid_quantity,
--           limit_exceeded (tickets the user may still hold),
--           sold_out (tickets left in the zone), idempotency_key_reused,
--           pass_revoked (not admitted: left the queue or was dropped),
--           pass_expired, sale_frozen (its Redis state is being restored),
--           id_taken (the keyed id belongs to another user)

local uid, zone, rid, fp = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
-- Whole numbers become text through '%d': an integer printf. A number handed
-- to redis.call or tostring as it is goes through '%.14g', glibc's
-- floating-point printf, several times dearer.
local function int(n) return string.format('%d', n) end
-- Kept as text: it is written as it came, never formatted back from a number.
local qtext = ARGV[3]

-- The time in ms as text and as a number, built from TIME's two strings
-- without formatting a number (Lua's number-to-text goes through printf).
local t = redis.call('TIME')
local nowtext = t[1] .. string.sub('000000' .. t[2], -6, -4)
local now = tonumber(nowtext)

-- A sale's meta always has opens_at_ms, or frozen while it is restored: with
-- neither, there is no sale (one read instead of EXISTS and then HMGET).
local m = redis.call('HMGET', KEYS[1], 'opens_at_ms', 'closes_at_ms', 'per_user_limit', 'hold_ttl_ms', 'frozen')
if not m[1] and not m[5] then
  return {'err', 'sale_not_found', '0'}
end

if fp ~= '' then
  local existing = redis.call('HMGET', KEYS[3], 'user', 'zone', 'qty', 'status',
    'expires_ms', 'created_ms', 'confirmed_ms', 'cancelled_ms', 'fp')
  if existing[1] then
    if existing[1] ~= uid then
      return {'err', 'id_taken', '0'}
    end
    if existing[9] ~= fp then
      return {'err', 'idempotency_key_reused', '0'}
    end
    -- The first response was the fresh hold: replay it as it was.
    return {'ok', rid, existing[2], existing[3], 'held', existing[5], existing[6], '0', '0', '1'}
  end
end

local opens, closes = tonumber(m[1]), tonumber(m[2])
local limit, ttl = tonumber(m[3]), tonumber(m[4])
if m[5] == '1' then
  return {'err', 'sale_frozen', '0'}
end
if now < opens then
  return {'err', 'sale_not_open', '1'}
end
if closes > 0 and now >= closes then
  return {'err', 'sale_not_open', '2'}
end

local admitted_until = redis.call('ZSCORE', KEYS[6], uid)
if not admitted_until then
  return {'err', 'pass_revoked', '0'}
end
if tonumber(admitted_until) <= now then
  return {'err', 'pass_expired', '0'}
end

local z = redis.call('HMGET', KEYS[2], zone .. ':avail', zone .. ':held')
if not z[1] then
  return {'err', 'zone_not_found', '0'}
end
-- load_sale writes a zone's four counters together (restore goes through it
-- too), so a zone with :avail has :held.
local avail, held = tonumber(z[1]), tonumber(z[2])

-- A whole number from 1, written plainly (so the text can be stored as is).
if not string.find(qtext, '^[1-9]%d*$') then
  return {'err', 'invalid_quantity', '0'}
end
local qty = tonumber(qtext)

local used = tonumber(redis.call('HGET', KEYS[4], 'tickets') or '0')
if used + qty > limit then
  return {'err', 'limit_exceeded', int(limit - used)}
end
if avail < qty then
  return {'err', 'sold_out', int(avail)}
end

-- All checks passed: write.
local expires = int(now + ttl)
redis.call('HSET', KEYS[2], zone .. ':avail', int(avail - qty), zone .. ':held', int(held + qty))
redis.call('HSET', KEYS[4], 'tickets', int(used + qty), rid, '1')
redis.call('HSET', KEYS[3], 'user', uid, 'zone', zone, 'qty', qtext, 'status', 'held',
  'expires_ms', expires, 'created_ms', nowtext, 'fp', fp)
redis.call('ZADD', KEYS[5], expires, rid)
redis.call('ZREM', KEYS[7], uid)
return {'new', expires, nowtext}
