-- due_holds: the holds of a sale whose deadline has passed, by Redis's
-- clock, oldest first. Reads only; expire_holds then ends them, with every
-- key it touches named in KEYS.
--
-- KEYS[1]  {sale:<id>}:deadlines
-- ARGV[1]  most ids to return
-- Returns  reservation ids

local limit = tonumber(ARGV[1])
if not limit or limit < 1 then
  return redis.error_reply('ERR due_holds: bad limit')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
