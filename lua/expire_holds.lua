-- expire_holds: sweep a sale's holds whose deadline has passed and return
-- their tickets to the zones.
--
-- Driven by the deadlines sorted set, never by key TTLs or keyspace
-- notifications, so a hold cannot leak its tickets: it is either confirmed,
-- cancelled, or found here. Reservation and buyer hashes are reached
-- through the sale's key prefixes; they share the sale's hash tag, so the
-- script stays on one cluster slot.
--
-- KEYS[1]  {sale:<id>}:deadlines
-- KEYS[2]  {sale:<id>}:zones
-- KEYS[3]  {sale:<id>}:meta       a frozen sale (being restored) is left alone
-- ARGV[1]  reservation key prefix, "{sale:<id>}:res:"
-- ARGV[2]  most holds to expire in one call
-- ARGV[3]  buyer key prefix, "{sale:<id>}:buyer:"
-- Returns  {holds expired, tickets returned}

local limit = tonumber(ARGV[2])
if not limit or limit < 1 then
  return redis.error_reply('ERR expire_holds: bad limit')
end
if redis.call('HGET', KEYS[3], 'frozen') == '1' then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local holds, tickets = 0, 0
for _, rid in ipairs(due) do
  local key = ARGV[1] .. rid
  local r = redis.call('HMGET', key, 'user', 'zone', 'qty', 'status')
  if r[4] == 'held' then
    local qty = tonumber(r[3])
    redis.call('HSET', key, 'status', 'expired', 'expired_ms', now)
    return_tickets(KEYS[2], ARGV[3] .. r[1], r[2], qty)
    holds = holds + 1
    tickets = tickets + qty
  end
  redis.call('ZREM', KEYS[1], rid)
end
return {holds, tickets}
