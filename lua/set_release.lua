-- set_release: apply an organizer's release settings to a sale's live copy,
-- only if Redis has the sale. A Redis that lost the sale must not get back a
-- meta hash with nothing but these fields in it.
--
-- KEYS[1]  {sale:<id>}:meta
-- ARGV     field, value, field, value, ...
-- Returns  1 when applied, 0 when Redis does not have the sale, -1 when the
--          sale is frozen (being restored: Postgres's settings are the ones
--          the restore puts back)

if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'frozen') == '1' then
  return -1
end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
