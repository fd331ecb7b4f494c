-- queue_status: where a buyer stands. The most frequent call of a sale, so it
-- is small: two ZSCOREs, a ZRANK (O(log n)) and, at most every few seconds
-- per buyer, one ZADD to record that the buyer is still there.
--
-- KEYS[1]  {sale:<id>}:meta      (sold_out)
-- KEYS[2]  {sale:<id>}:waiting
-- KEYS[3]  {sale:<id>}:seen
-- KEYS[4]  {sale:<id>}:admitted
-- KEYS[5]  {sale:<id>}:expired
-- ARGV[1]  buyer id
-- ARGV[2]  how stale a last-seen mark may get before it is refreshed (ms)
-- Returns  {"waiting", position (1 = next), measured rate, release_rate,
--           paused, opens_at_ms}, {"admitted", pass deadline ms,
--           pass_ttl_seconds}, {"sold_out"}, {"expired"}, {"not_in_queue"}
--          or {"err", "sale_not_found"}, {"err", "sale_frozen"} (a waiting
--          buyer's poll writes the last-seen mark: a sale being restored
--          takes no write)

local user = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local deadline = redis.call('ZSCORE', KEYS[4], user)
if deadline then
  if tonumber(deadline) > now then
    return {'admitted', deadline, redis.call('HGET', KEYS[1], 'pass_ttl_seconds')}
  end
  return {'expired'}
end

local rank = redis.call('ZRANK', KEYS[2], user)
if not rank then
  if redis.call('SISMEMBER', KEYS[5], user) == 1 then
    return {'expired'}
  end
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {'err', 'sale_not_found'}
  end
  return {'not_in_queue'}
end

local m = redis.call('HMGET', KEYS[1], 'sold_out', 'measured_rate', 'release_rate', 'paused', 'opens_at_ms', 'frozen')
if m[6] == '1' then
  return {'err', 'sale_frozen'}
end
local seen = redis.call('ZSCORE', KEYS[3], user)
if not seen or now - tonumber(seen) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[3], now, user)
end
if m[1] == '1' then
  return {'sold_out'}
end
return {'waiting', string.format('%d', rank + 1), m[2] or '0', m[3], m[4], m[5]}
