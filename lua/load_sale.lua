-- load_sale: put a sale's definition and zone stock into Redis, once.
--
-- Postgres is the source of truth for a sale's definition; this script makes
-- Redis's copy. It never overwrites live counters: if the sale is already
-- loaded it does nothing, so running it twice (a retried create, a second
-- replica) is harmless.
--
-- KEYS[1]  {sale:<id>}:meta   hash of settings
-- KEYS[2]  {sale:<id>}:zones  hash "<code>:cap|avail|held|conf" -> count
-- KEYS[3]  {sale:<id>}:seats    the seated zones' index (lib/seats)
-- KEYS[4]  {sale:<id>}:seatmap  the seated zones' seats (lib/seats)
-- ARGV[1]  number of meta field/value pairs that follow (n)
-- ARGV[2 .. 2n+1]  meta field, value, field, value, ...
-- ARGV[2n+2 ..]    zone code, capacity, seats, code, capacity, seats...:
--                  seats is a seated zone's segment of the seat map
--                  ("|A:....|B:.._..|", lib/seats; free, or sold as a
--                  restore finds them, its seats adding up to the
--                  capacity), "" for general admission
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
  local seats = ARGV[i + 2]
  if seats ~= '' then
    if not string.find(seats, '^|[%w]+:[.#_]+') or not string.find(seats, '[.#_]|$')
      or string.find(seats, '[^%w|:.#_]') then
      return redis.error_reply('ERR load_sale: bad seats for zone ' .. ARGV[i])
    end
    local _, free = string.gsub(seats, '[.#]', '')
    if free ~= cap then
      return redis.error_reply('ERR load_sale: seats do not add up to the capacity of zone ' .. ARGV[i])
    end
  end
end

-- All arguments are valid: write.
for i = 2, 2 * n + 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local seated = {}
for i = zones_from, #ARGV, 3 do
  local code = ARGV[i]
  redis.call('HSET', KEYS[2],
    code .. ':cap', ARGV[i + 1],
    code .. ':avail', ARGV[i + 1],
    code .. ':held', 0,
    code .. ':conf', 0)
  local seats = ARGV[i + 2]
  if seats ~= '' then
    -- The zone's segment goes at the end of the map; its rows are indexed.
    local first = redis.call('APPEND', KEYS[4], seats) - #seats + 1
    local last = first + #seats - 1
    local fields = {}
    for bar, name, row in string.gmatch(seats, '()|(%w+):([^|]*)') do
      fields[#fields + 1] = code .. ':r:' .. name
      fields[#fields + 1] = string.format('%d', (first + bar + #name + 1) * 2048 + #row)
    end
    -- A value longer than hash-max-listpack-value (64 bytes by default)
    -- keeps the index a hash table: a hold's lookup of its row is then one
    -- probe, not a scan of every row's field.
    fields[#fields + 1] = 'about'
    fields[#fields + 1] = 'the seated zones: their place in the seatmap string, their rows, where searches start (lib/seats)'
    redis.call('HSET', KEYS[3], unpack(fields))
    seated[#seated + 1] = string.format('%s=%d:%d', code, first, last)
  end
end
-- The seated zones and their segments, ",ST=1:20400," (lib/seats): ","
-- when there are none.
redis.call('HSET', KEYS[1], 'seated', ',' .. table.concat(seated, ',') .. (#seated > 0 and ',' or ''))
return 1
