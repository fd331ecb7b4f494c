-- leave_queue: a buyer gives up the place, or the pass (which revokes it).
--
-- KEYS[1]  {sale:<id>}:waiting
-- KEYS[2]  {sale:<id>}:admitted
-- KEYS[3]  {sale:<id>}:turns
-- KEYS[4]  {sale:<id>}:expired
-- KEYS[5]  {sale:<id>}:meta      a frozen sale (being restored) takes no write
-- ARGV[1]  buyer id
-- Returns  1 if the buyer was waiting or admitted, else 0; -1 when the sale
--          is frozen

local user = ARGV[1]
if redis.call('HGET', KEYS[5], 'frozen') == '1' then
  return -1
end
local was = redis.call('ZREM', KEYS[1], user) + redis.call('ZREM', KEYS[2], user)
redis.call('ZREM', KEYS[3], user)
redis.call('SREM', KEYS[4], user)
if was > 0 then
  return 1
end
return 0
