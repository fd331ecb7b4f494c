-- reconcile_read: one consistent look at a sale's zone counters and at the
-- confirmations and cancellations still on their way to Postgres, taken in a
-- single atomic step so the two can be compared without a race.
--
-- In flight means appended to the stream and not yet acknowledged by the
-- sink's group: entries after the group's last-delivered-id, and entries
-- delivered but still pending. Without the group, the whole stream is. (A
-- pending entry may already be committed in Postgres, its acknowledgement
-- not yet sent: the caller asks Postgres which ones are.)
--
-- KEYS[1]  {sale:<id>}:zones
-- KEYS[2]  {sale:<id>}:stream
-- ARGV[1]  the sink's consumer group
-- Returns  {zones hash as a flat list,
--           {type, reservation id, zone, qty, ...} of each entry in flight,
--           entries in flight}

local zones = redis.call('HGETALL', KEYS[1])
local flat, count = {}, 0

local function add(entry)
  local f = {}
  local fields = entry[2]
  for i = 1, #fields, 2 do
    f[fields[i]] = fields[i + 1]
  end
  flat[#flat + 1] = f['type'] or '?'
  flat[#flat + 1] = f['id'] or '?'
  flat[#flat + 1] = f['zone'] or '?'
  flat[#flat + 1] = f['qty'] or '0'
  count = count + 1
end

if redis.call('EXISTS', KEYS[2]) == 1 then
  local last = '0-0'
  local has_group = false
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[2])) do
    local info = {}
    for i = 1, #g, 2 do
      info[g[i]] = g[i + 1]
    end
    if info['name'] == ARGV[1] then
      last = info['last-delivered-id']
      has_group = true
    end
  end
  local start = '-'
  if has_group then
    start = '(' .. last
    for _, p in ipairs(redis.call('XPENDING', KEYS[2], ARGV[1], '-', '+', 100000)) do
      local e = redis.call('XRANGE', KEYS[2], p[1], p[1])
      if e[1] then
        add(e[1])
      end
    end
  end
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], start, '+')) do
    add(e)
  end
end

return {zones, flat, count}
