-- reconcile_read: one consistent look at a sale's counters and at where its
-- stream stands, taken in a single atomic step. It reads a few keys and no
-- stream entries, so it costs the same with an empty stream as with a
-- million entries waiting for Postgres (the caller pages through those
-- with XRANGE, up to the last id read here).
--
-- The counters are as of stream sequence number `seq`: every entry up to
-- `last id` is numbered at most `seq`, every later one above it.
--
-- KEYS[1]  {sale:<id>}:zones
-- KEYS[2]  {sale:<id>}:stream
-- KEYS[3]  {sale:<id>}:meta
-- KEYS[4]  {sale:<id>}:seatmap  the seated zones' seats (lib/seats; where
--                               each zone's lie: meta `seated`)
-- ARGV[1]  the sink's consumer group
-- Returns  {zones hash as a flat list, seq, last id ("0-0" with no stream),
--           entries pending in the group, the group's last delivered id
--           ("" without the group), frozen ("1" or ""), frozen reason,
--           epoch ("" when the sale is missing), seats: a flat list
--           zone, its segment of the seat map, ... of each seated zone}

local zones = redis.call('HGETALL', KEYS[1])
local m = redis.call('HMGET', KEYS[3], 'seq', 'frozen', 'frozen_reason', 'epoch', 'seated')
local last, pending, delivered = '0-0', 0, ''
if redis.call('EXISTS', KEYS[2]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    end
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local f = {}
    for i = 1, #g, 2 do
      f[g[i]] = g[i + 1]
    end
    if f['name'] == ARGV[1] then
      pending = f['pending']
      delivered = f['last-delivered-id']
    end
  end
end
local seats = {}
for zone, first, last in string.gmatch(m[5] or '', '([^,=]+)=(%d+):(%d+)') do
  seats[#seats + 1] = zone
  seats[#seats + 1] = redis.call('GETRANGE', KEYS[4], tonumber(first) - 1, tonumber(last) - 1)
end
return {zones, m[1] or '0', last, pending, delivered, m[2] or '', m[3] or '', m[4] or '', seats}
