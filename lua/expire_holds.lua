-- expire_holds: end the holds due_holds found whose deadline has passed,
-- and return their tickets to the zones.
--
-- Driven by the deadlines sorted set, never by key TTLs or keyspace
-- notifications, so a hold cannot leak its tickets: it is either confirmed,
-- cancelled, or found here. Every key touched is named in KEYS (the caller
-- reads each reservation's buyer first; a reservation's buyer never
-- changes), all under the sale's hash tag, so the script runs on one
-- cluster slot. Between the read and this step a hold may have been
-- confirmed, cancelled or already expired: its status and its deadline are
-- checked again here.
--
-- KEYS[1]      {sale:<id>}:deadlines
-- KEYS[2]      {sale:<id>}:zones
-- KEYS[3]      {sale:<id>}:meta       a frozen sale (being restored) is left alone
-- KEYS[4]      {sale:<id>}:seats      the seated zones' index (lib/seats)
-- KEYS[5]      {sale:<id>}:seatmap    a seated hold's seats become free
-- KEYS[4+2i]   {sale:<id>}:res:<ARGV[i]>      for i = 1..#ARGV
-- KEYS[5+2i]   {sale:<id>}:buyer:<its user>   (any key of the sale when the
--              reservation is gone)
-- ARGV[i]      a reservation id
-- Returns  {holds expired, tickets returned}

if #KEYS ~= 5 + 2 * #ARGV then
  return redis.error_reply('ERR expire_holds: two keys per reservation')
end
if redis.call('HGET', KEYS[3], 'frozen') == '1' then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local holds, tickets = 0, 0
for i, rid in ipairs(ARGV) do
  local deadline = tonumber(redis.call('ZSCORE', KEYS[1], rid))
  if deadline and deadline <= now then
    local key, buyer = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
    local r = redis.call('HMGET', key, 'zone', 'qty', 'status', 'seats')
    if r[3] == 'held' then
      local qty = tonumber(r[2])
      redis.call('HSET', key, 'status', 'expired', 'expired_ms', now)
      return_tickets(KEYS[2], buyer, r[1], qty, KEYS[4], KEYS[5], r[4])
      holds = holds + 1
      tickets = tickets + qty
    end
    redis.call('ZREM', KEYS[1], rid)
  end
end
return {holds, tickets}
