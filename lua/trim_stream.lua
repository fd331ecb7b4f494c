-- trim_stream: drop from a sale's stream only what every consumer group has
-- acknowledged. Never a plain MAXLEN, which could drop a confirmation that
-- Postgres has not yet recorded.
--
-- For each group the safe point is its oldest pending entry, or, with
-- nothing pending, just past the last entry delivered to it. The stream is
-- trimmed below the lowest safe point of all groups (XTRIM MINID keeps the
-- entry at that id).
--
-- The trim is approximate (`~`): it removes whole nodes of the stream only,
-- and at most 10,000 entries a call (Redis's limit for an approximate trim,
-- 100 times stream-node-max-entries), so one call stays short however large
-- the acknowledged backlog (an exact trim of 200,000 entries held Redis for
-- 14 to 20 ms). What it leaves is trimmed by the next passes; entries at or
-- above the safe point are never removed either way.
--
-- KEYS[1]  {sale:<id>}:stream
-- KEYS[2]  {sale:<id>}:meta    a frozen sale (being restored) is left alone
-- Returns  entries removed (0 when the stream or its groups do not exist,
--          or the sale is frozen)

if redis.call('HGET', KEYS[2], 'frozen') == '1' then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return 0
end

local function less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local safe = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  local point
  local pending = redis.call('XPENDING', KEYS[1], info['name'])
  if pending[1] > 0 then
    point = pending[2]
  else
    -- Everything up to last-delivered-id is acknowledged: keep only what follows.
    local m, s = string.match(info['last-delivered-id'], '^(%d+)-(%d+)$')
    point = m .. '-' .. (tonumber(s) + 1)
  end
  if safe == nil or less(point, safe) then
    safe = point
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', safe)
