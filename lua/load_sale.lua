-- load_sale: put a sale's definition and zone stock into Redis, once.
--
-- Postgres is the source of truth for a sale's definition; this script makes
-- Redis's copy. It never overwrites live counters: if the sale is already
-- loaded it does nothing, so running it twice (a retried create, a second
-- replica) is harmless.
--
-- KEYS[1]  {sale:<id>}:meta   hash of settings
-- KEYS[2]  {sale:<id>}:zones  hash "<code>:cap|avail|held|conf" -> count
-- ARGV[1]  number of meta field/value pairs that follow (n)
-- ARGV[2 .. 2n+1]  meta field, value, field, value, ...
-- ARGV[2n+2 ..]    zone code, capacity, code, capacity, ...
-- Returns  1 when loaded now, 0 when it was already there.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end

local n = tonumber(ARGV[1])
if not n or n < 1 then
  return redis.error_reply('ERR load_sale: bad meta count')
end
local zones_from = 2 * n + 2
if (#ARGV - zones_from + 1) % 2 ~= 0 or #ARGV < zones_from + 1 then
  return redis.error_reply('ERR load_sale: zones must be code/capacity pairs')
end
for i = zones_from, #ARGV, 2 do
  local cap = tonumber(ARGV[i + 1])
  if not cap or cap < 1 or cap ~= math.floor(cap) then
    return redis.error_reply('ERR load_sale: bad capacity for zone ' .. ARGV[i])
  end
end

-- All arguments are valid: write.
for i = 2, 2 * n + 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = zones_from, #ARGV, 2 do
  local code = ARGV[i]
  redis.call('HSET', KEYS[2],
    code .. ':cap', ARGV[i + 1],
    code .. ':avail', ARGV[i + 1],
    code .. ':held', 0,
    code .. ':conf', 0)
end
return 1
