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
-- KEYS[8]  {sale:<id>}:seats       the seated zones' index (lib/seats)
-- KEYS[9]  {sale:<id>}:seatmap     the seated zones' seats (lib/seats)
-- ARGV[1]  user id
-- ARGV[2]  zone code
-- ARGV[3]  quantity, a whole number >= 1 written plainly ("2", not "2.0")
-- ARGV[4]  reservation id
-- ARGV[5]  request fingerprint when an idempotency key was given, else ""
-- ARGV[6]  which seats: "" any (in a seated zone: the best free seats, side
--          by side while a row has room for them, else one by one),
--          "t" the best free seats side by side in one row, or
--          "x:A-7,A-8" exactly these (distinct; ARGV[3] is their number),
--          then from ARGV[7] each one's row and number: "A", "7", "A", "8"
-- Returns  {"new", expires_ms, created_ms, seats} for a fresh hold (the
--           caller knows the rest: id, zone, quantity, status held; seats is
--           "" in a general-admission zone, else "A-7,A-8"),
--       or {"ok", rid, zone, qty, status, expires_ms, created_ms,
--           confirmed_ms, cancelled_ms, replayed(0|1), seats} for a replay,
--       or {"err", code, number}: sale_not_found, sale_not_open (1 = not yet
--           open, 2 = closed), zone_not_found, invalid_quantity,
--           limit_exceeded (tickets the user may still hold),
--           sold_out (tickets left in the zone), idempotency_key_reused,
--           pass_revoked (not admitted: left the queue or was dropped),
--           pass_expired, sale_frozen (its Redis state is being restored),
--           id_taken (the keyed id belongs to another user),
--           zone_not_seated (seats asked for in a general-admission zone),
--           unknown_seat (the first seat id with no such seat: its id in
--           place of the number), seats_taken (the seats asked for that are
--           not free, "A-7,A-8", in place of the number)
--
-- Seats are chosen here, in the same step as the counters: nearest the
-- front first (the rows' order), then nearest the middle of the row
-- (lib/seats); side by side where a row still has room for them, unless
-- `together` was asked for and none has.

local uid, zone, rid, fp, pick = ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6] or ''
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
local m = redis.call('HMGET', KEYS[1], 'opens_at_ms', 'closes_at_ms', 'per_user_limit', 'hold_ttl_ms', 'frozen',
  'seated')
if not m[1] and not m[5] then
  return {'err', 'sale_not_found', '0'}
end

if fp ~= '' then
  local existing = redis.call('HMGET', KEYS[3], 'user', 'zone', 'qty', 'status',
    'expires_ms', 'created_ms', 'confirmed_ms', 'cancelled_ms', 'fp', 'seats')
  if existing[1] then
    if existing[1] ~= uid then
      return {'err', 'id_taken', '0'}
    end
    if existing[9] ~= fp then
      return {'err', 'idempotency_key_reused', '0'}
    end
    -- The first response was the fresh hold: replay it as it was.
    return {'ok', rid, existing[2], existing[3], 'held', existing[5], existing[6], '0', '0', '1',
      existing[10] or ''}
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

-- Whether the zone is seated, from the meta (lib/seats): where its
-- segment's numbers start in `seated`; whether exact seats were asked for;
-- and for a search for the best seats, q (the seats wanted side by side),
-- whose front is read with the counters.
local seated_at = m[6] and string.find(m[6], ',' .. zone .. '=', 1, true)
local p1, p2 = string.byte(pick, 1, 2)
local exact = p1 == 120 and p2 == 58 -- 'x:'
local q = seated_at and not exact and qtext
local z
if q and pick == '' and q ~= '1' then
  -- Without `together`, the front of the search one by one too.
  z = redis.call('HMGET', KEYS[2], zone .. ':avail', zone .. ':held', zone .. ':f' .. q, zone .. ':f1')
elseif q then
  z = redis.call('HMGET', KEYS[2], zone .. ':avail', zone .. ':held', zone .. ':f' .. q)
else
  z = redis.call('HMGET', KEYS[2], zone .. ':avail', zone .. ':held')
end
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

-- A sale loaded before the seat map was one string has no `seated`: its
-- seated zones keep their seats in the earlier form, which this script no
-- longer reads. They take no hold until `flashsale restore` rebuilds them.
if not m[6] and redis.call('HEXISTS', KEYS[8], zone .. ':rows') == 1 then
  return {'err', 'sale_frozen', '0'}
end
local seated = seated_at and true or false
if pick ~= '' and not seated then
  return {'err', 'zone_not_seated', '0'}
end
-- Exact seats: which they are, and what they are now, read before any
-- check that may refuse (reads only).
local seat_list, seat_writes, taken, front_fields
if seated and exact then
  seat_list = string.sub(pick, 3)
  -- Each seat's row and number, from ARGV[7] on.
  local n = (#ARGV - 6) / 2
  if n ~= qty then
    return {'err', 'invalid_quantity', '0'}
  end
  local pos, row = seat_places(KEYS[8], zone, ARGV, 7, n)
  if not pos then
    return {'err', 'unknown_seat', row} -- the id with no seat
  end
  local s, lo = seat_span_bytes(KEYS[9], pos)
  for k = 1, n do
    local b = s and string.byte(s, pos[k] - lo + 1)
      or string.byte(redis.call('GETRANGE', KEYS[9], pos[k] - 1, pos[k] - 1))
    -- A number inside a row's range may still be no seat (an aisle gap).
    if b == SEAT_NONE_BYTE then
      return {'err', 'unknown_seat', ARGV[5 + 2 * k] .. '-' .. ARGV[6 + 2 * k]}
    end
    -- The seats not free, named in the order asked.
    if b ~= SEAT_FREE_BYTE then
      local id = ARGV[5 + 2 * k] .. '-' .. ARGV[6 + 2 * k]
      taken = taken and taken .. ',' .. id or id
    end
  end
  -- Kept in map order.
  if not seat_in_order(pos) then
    seat_list = seat_order(pos, ARGV, 7)
  end
  seat_writes = {s, lo, pos}
end

local used = tonumber(redis.call('HGET', KEYS[4], 'tickets') or '0')
if used + qty > limit then
  return {'err', 'limit_exceeded', int(limit - used)}
end
if avail < qty then
  return {'err', 'sold_out', int(avail)}
end

if taken then
  return {'err', 'seats_taken', taken}
elseif seated and not exact then
  -- The best seats: the best block of qty side by side; without
  -- `together`, when no row has one, the best seats one by one. Each
  -- search starts from the front kept for it (q seats together, or '1' for
  -- seats one by one).
  local first_seat, last_seat = string.match(m[6], '^(%d+):(%d+)', seated_at + #zone + 2)
  last_seat = tonumber(last_seat)
  -- Where the next search of a kind starts: written with the counters below,
  -- or now when nothing was found (so that a search that found nothing is
  -- not done again until seats are freed: a front at the zone's end). The
  -- largest q with a front is kept too, for lower_fronts.
  local was, front, fresh_q = tonumber(z[3]), nil, nil
  if was ~= last_seat then
    seat_list, seat_writes, front = best_together(KEYS[9], qty, was or tonumber(first_seat), last_seat)
    front = front or last_seat
    if front ~= was then
      front_fields, fresh_q = front_moved(front_fields, zone, q, was, front, fresh_q)
    end
  end
  if not seat_list and pick ~= 't' and qty > 1 then
    was = tonumber(z[4])
    if was ~= last_seat then
      seat_list, seat_writes, front = best_any(KEYS[9], qty, was or tonumber(first_seat), last_seat)
      front = front or last_seat
      if front ~= was then
        front_fields, fresh_q = front_moved(front_fields, zone, '1', was, front, fresh_q)
      end
    end
  end
  if fresh_q then
    local fmax = tonumber(redis.call('HGET', KEYS[2], zone .. ':fmax'))
    if not fmax or fmax < tonumber(fresh_q) then
      front_fields[#front_fields + 1] = zone .. ':fmax'
      front_fields[#front_fields + 1] = fresh_q
    end
  end
  if not seat_list then
    if front_fields then
      redis.call('HSET', KEYS[2], unpack(front_fields))
    end
    -- No block that long is left (together), or the counters and the map
    -- disagree: refuse rather than hold fewer.
    return {'err', 'sold_out', int(avail)}
  end
end

-- All checks passed: write.
if not seated then
  seat_list = ''
elseif exact then
  if seat_writes[1] then
    paint_within(KEYS[9], seat_writes[1], seat_writes[2], seat_writes[3], SEAT_HELD)
  else
    paint_places(KEYS[9], seat_writes[3], SEAT_HELD)
  end
else
  for i = 1, #seat_writes, 2 do
    redis.call('SETRANGE', KEYS[9], seat_writes[i], seat_writes[i + 1])
  end
end
local expires = int(now + ttl)
if front_fields then
  redis.call('HSET', KEYS[2], zone .. ':avail', int(avail - qty), zone .. ':held', int(held + qty),
    unpack(front_fields))
else
  redis.call('HSET', KEYS[2], zone .. ':avail', int(avail - qty), zone .. ':held', int(held + qty))
end
redis.call('HSET', KEYS[4], 'tickets', int(used + qty), rid, '1')
redis.call('HSET', KEYS[3], 'user', uid, 'zone', zone, 'qty', qtext, 'status', 'held',
  'expires_ms', expires, 'created_ms', nowtext, 'fp', fp, 'seats', seat_list)
redis.call('ZADD', KEYS[5], expires, rid)
redis.call('ZREM', KEYS[7], uid)
return {'new', expires, nowtext, seat_list}
