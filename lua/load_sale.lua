-- load_sale: put a sale's definition and zone stock into Redis, once.
--
-- Postgres is the source of truth for a sale's definition; this script makes
-- Redis's copy. It never overwrites live counters: if the sale is already
-- loaded it does nothing, so running it twice (a retried create, a second
-- replica) is harmless.
--
-- KEYS[1]  {sale:<id>}:meta   hash of settings
-- KEYS[2]  {sale:<id>}:zones  hash "<code>:cap|avail|held|conf" -> count
-- KEYS[3]  {sale:<id>}:seats  a seated zone's layout and seat map, every
--                             seat free (lib/seats)
-- ARGV[1]  number of meta field/value pairs that follow (n)
-- ARGV[2 .. 2n+1]  meta field, value, field, value, ...
-- ARGV[2n+2 ..]    zone code, capacity, layout, code, capacity, layout...:
--                  layout "A:20,B:22" for a seated zone (its seats add up
--                  to its capacity), "" for general admission
-- Returns  1 when loaded now, 0 when it was already there.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end

local n = tonumber(ARGV[1])
if not n or n < 1 then
  return redis.error_reply('ERR load_sale: bad meta count')
end
local zones_from = 2 * n + 2
if (#ARGV - zones_from + 1) % 3 ~= 0 or #ARGV < zones_from + 2 then
  return redis.error_reply('ERR load_sale: zones must be code/capacity/layout triples')
end
for i = zones_from, #ARGV, 3 do
  local cap = tonumber(ARGV[i + 1])
  if not cap or cap < 1 or cap ~= math.floor(cap) then
    return redis.error_reply('ERR load_sale: bad capacity for zone ' .. ARGV[i])
  end
  if ARGV[i + 2] ~= '' then
    local seats = 0
    for n in string.gmatch(ARGV[i + 2], ':(%d+)') do
      seats = seats + tonumber(n)
    end
    if seats ~= cap then
      return redis.error_reply('ERR load_sale: seats do not add up to the capacity of zone ' .. ARGV[i])
    end
  end
end

-- All arguments are valid: write.
for i = 2, 2 * n + 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
for i = zones_from, #ARGV, 3 do
  local code = ARGV[i]
  redis.call('HSET', KEYS[2],
    code .. ':cap', ARGV[i + 1],
    code .. ':avail', ARGV[i + 1],
    code .. ':held', 0,
    code .. ':conf', 0)
  if ARGV[i + 2] ~= '' then
    redis.call('HSET', KEYS[3], code .. ':rows', ARGV[i + 2],
      code .. ':map', string.rep('.', tonumber(ARGV[i + 1])))
  end
end
return 1
