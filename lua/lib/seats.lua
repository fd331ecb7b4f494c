-- lib/seats: a seated zone's seats, prepended to the scripts that hold,
-- confirm, cancel and expire reservations.
--
-- Every seated zone of a sale lives in one string, {sale:<id>}:seatmap, one
-- segment per zone. In it each row is '|', the row's name, ':' and then one
-- character per seat number from 1: '.' free, '*' held, '#' sold, '_' no
-- such seat (an aisle gap, a blocked view). A last '|' closes the zone:
--   |A:....__....|B:..........|
-- Row names are letters and digits, so a search for free seats never meets
-- a name. A hold reads a window of the string from the first row that can
-- serve it and writes its own seats in place (GETRANGE, SETRANGE): its cost
-- does not grow with the zone, and what it sends to the AOF and to replicas
-- is its seats, not the map.
--
-- The sale's meta field `seated` lists the seated zones and where their
-- segments lie, ",ST=1:20400,BAL=20401:30000," (positions from 1), so a
-- hold in a general-admission zone reads nothing of seats and a hold in a
-- seated one finds its segment in what it reads of the sale anyway.
--
-- {sale:<id>}:seats, a hash, is the index:
--   <zone>:r:<row>  the position of the row's seat 1 times 2048, plus how
--                   many numbers the row has (at most 1,000): one number
--
-- The zone counters ({sale:<id>}:zones) keep where the best-seat searches
-- start, read and written with the counters a hold reads and writes anyway:
--   <zone>:f<q>     for a search for q free seats side by side (q = 1: any
--                   free seat), the row (its '|') before which there are
--                   none; absent: the zone's first row. A search moves it
--                   on; seats made free move it back.
--   <zone>:fmax     the largest q with such a field
-- Each reservation lists its own seats (its `seats` field, "A-7,A-8"), so a
-- reservation that ends knows which to free.
--
-- A seated hold costs a few Redis calls more than a general-admission one
-- (the row index, a window of the map, the write of its seats), and the
-- code here avoids making Lua strings and tables it does not need: a Redis
-- call or a new string costs about a microsecond each.

local SEAT_FREE, SEAT_HELD, SEAT_SOLD = '.', '*', '#'
local SEAT_FREE_BYTE, SEAT_NONE_BYTE = 46, 95 -- '.', '_'
-- Bytes read at a time: a search starts small (the row it starts at is
-- usually the one it wants, and Redis hands a script its bytes at about a
-- microsecond a half kilobyte) and doubles each window up to SEAT_WINDOW.
-- A row is at most 1,006 bytes (a 4-character name and 1,000 seats), so the
-- largest window always holds a whole row.
local SEAT_FIRST_WINDOW, SEAT_WINDOW = 256, 4096

local function seat_int(n) return string.format('%d', n) end

-- Where the seats listed in `list` ("A-7,A-8") of `zone` are: their ids
-- and positions in the map, in the order listed, and where the first of
-- their rows starts; or nil and the first id that names no row and number.
-- (The API lets only plain ids through: a row, '-', a number from 1.)
local function seat_places(index, zone, list)
  local ids, pos, names, fields, slot = {}, {}, {}, {}, {}
  for id, name, n in string.gmatch(list, '(([^,-]+)%-([^,]*))') do
    local k = #ids + 1
    ids[k], names[k], pos[k] = id, name, tonumber(n)
    if not pos[k] or pos[k] < 1 then
      return nil, id
    end
    if not slot[name] then
      fields[#fields + 1] = zone .. ':r:' .. name
      slot[name] = #fields
    end
  end
  if #ids == 0 then
    return ids, pos, 0
  end
  local rows = redis.call('HMGET', index, unpack(fields))
  local row
  for k = 1, #ids do
    -- first * 2048 + numbers (lib/seats: a row has at most 1,000)
    local r = tonumber(rows[slot[names[k]]])
    if not r or pos[k] > r % 2048 then
      return nil, ids[k]
    end
    local first = (r - r % 2048) / 2048
    pos[k] = first + pos[k] - 1
    local start = first - #names[k] - 2
    if not row or start < row then
      row = start
    end
  end
  return ids, pos, row
end

-- Sorts ids and pos (in step) into map order, in place.
local function seat_order(ids, pos)
  for i = 2, #pos do
    local p, id, j = pos[i], ids[i], i - 1
    while j > 0 and pos[j] > p do
      pos[j + 1], ids[j + 1] = pos[j], ids[j]
      j = j - 1
    end
    pos[j + 1], ids[j + 1] = p, id
  end
end

-- Each position's byte in the map: one read when they lie within a window
-- (the seats of one row always do).
local function seat_bytes(map, pos)
  local lo, hi = pos[1], pos[1]
  for k = 2, #pos do
    lo, hi = math.min(lo, pos[k]), math.max(hi, pos[k])
  end
  local out = {}
  if hi - lo < SEAT_WINDOW then
    local s = redis.call('GETRANGE', map, lo - 1, hi - 1)
    for k = 1, #pos do
      out[k] = string.byte(s, pos[k] - lo + 1)
    end
  else
    for k = 1, #pos do
      out[k] = string.byte(redis.call('GETRANGE', map, pos[k] - 1, pos[k] - 1))
    end
  end
  return out
end

-- Sets the seats at `pos` (in map order) to `ch`: one SETRANGE per run of
-- neighbours.
local function paint_places(map, pos, ch)
  local k = 1
  while k <= #pos do
    local j = k
    while j < #pos and pos[j + 1] == pos[j] + 1 do
      j = j + 1
    end
    redis.call('SETRANGE', map, pos[k] - 1, j == k and ch or string.rep(ch, j - k + 1))
    k = j + 1
  end
end

-- The zone's segment, from the meta field `seated`: first, last (numbers),
-- or nil when the zone is not seated.
local function seat_span(seated, zone)
  local at = seated and string.find(seated, ',' .. zone .. '=', 1, true)
  if not at then
    return nil
  end
  local first, last = string.match(seated, '^(%d+):(%d+)', at + #zone + 2)
  return tonumber(first), tonumber(last)
end

-- Seats were made free from row `row` on: no search may start after it.
local function lower_fronts(zones, zone, row)
  local fmax = tonumber(redis.call('HGET', zones, zone .. ':fmax'))
  if not fmax then
    return
  end
  local fields = {}
  for q = 1, fmax do
    fields[q] = zone .. ':f' .. seat_int(q)
  end
  local fronts = redis.call('HMGET', zones, unpack(fields))
  local lowered = {}
  for q = 1, fmax do
    if fronts[q] and tonumber(fronts[q]) > row then
      lowered[#lowered + 1] = fields[q]
      lowered[#lowered + 1] = seat_int(row)
    end
  end
  if #lowered > 0 then
    redis.call('HSET', zones, unpack(lowered))
  end
end

-- The first row of the zone from position `from` (a row's '|') to `last`
-- (the zone's closing '|') that holds `needle` (plain text), read a window
-- at a time: returns the window, the row's '|' and the next '|' in it, and
-- the window's first position in the map (or nil when no row has it).
-- Continue from a row with seat_next_row(map, e + base - 1, ...).
local function seat_row_with(map, from, last, needle)
  local size = SEAT_FIRST_WINDOW
  while from < last do
    local win_last = math.min(from + size - 1, last)
    size = math.min(2 * size, SEAT_WINDOW)
    local win = redis.call('GETRANGE', map, from - 1, win_last - 1)
    local r = 1 -- the '|' of the row holding the hit, in win
    local hit = string.find(win, needle, 1, true)
    if hit then
      local e = string.find(win, '|', 2, true)
      while e and e < hit do
        r, e = e, string.find(win, '|', e + 1, true)
      end
      if e then
        return win, r, e, from
      end
      -- The row runs past the window: read again from its start.
    else
      if win_last == last then
        return nil
      end
      -- Read on from the last row the window begins.
      local e = string.find(win, '|', 2, true)
      while e do
        r, e = e, string.find(win, '|', e + 1, true)
      end
    end
    from = from + r - 1
  end
  return nil
end

-- The best `qty` free seats side by side in one row of the zone, searched
-- from `from` to `last` (the zone's closing '|'): the first row from the
-- front with such a block, and in it the block whose middle is nearest the
-- row's (the lower on a tie). Returns their ids and positions (map order)
-- and the row they are in; or nil when there is no such block.
local function best_together(map, qty, from, last)
  local block = string.rep(SEAT_FREE, qty)
  local win, r, e, base = seat_row_with(map, from, last, block)
  if not win then
    return nil
  end
  local colon = string.find(win, ':', r + 2, true)
  -- Seat s of the row is at colon + s in win. A block starting at s is
  -- |2s - k| from the middle: the best is the nearest start at or before
  -- k/2 (mid) or the nearest after it.
  local n = e - colon - 1
  local k = n + 2 - qty
  local mid = math.floor(k / 2)
  local best = string.find(win, block, colon + mid, true)
  best = best and best + qty - 1 < e and best - colon
  if best ~= mid and mid > 1 and (not best or 2 * best - k >= k - 2 * mid + 2) then
    -- Nothing at mid, and a start left of it may be nearer: the nearest
    -- such, found in the left of the row reversed.
    local left_part = string.reverse(string.sub(win, colon + 1, colon + mid + qty - 2))
    local rs = string.find(left_part, block, 1, true)
    local left = rs and mid - rs
    if left and (not best or k - 2 * left <= 2 * best - k) then
      best = left
    end
  end
  local name = string.sub(win, r + 1, colon - 1)
  local one = base + colon - 1 -- seat s is at one + s in the map
  local ids, pos = {}, {}
  for s = best, best + qty - 1 do
    ids[#ids + 1] = string.format('%s-%d', name, s)
    pos[#pos + 1] = one + s
  end
  return ids, pos, base + r - 1
end

-- The best `qty` free seats, not necessarily together, searched from
-- `from` to `last`: row by row from the front, each row's from its middle
-- out (the lower seat on a tie). Returns their ids and positions (map
-- order) and the first row with a free seat; or nil when fewer are free.
local function best_any(map, qty, from, last)
  local ids, pos, front = {}, {}, nil
  while #ids < qty do
    local win, r, e, base = seat_row_with(map, from, last, SEAT_FREE)
    if not win then
      break
    end
    front = front or base + r - 1
    local colon = string.find(win, ':', r + 2, true)
    local name = string.sub(win, r + 1, colon - 1)
    local one = base + colon - 1 -- seat a is at one + a in the map
    -- Seat a (at colon + a in win) is |2a - k| from the middle: walk out
    -- from it both ways, free seat to free seat. Going right is a search of
    -- the window; going left, of the left half of the row reversed (seat
    -- mid first), made only when the seat at mid is not free.
    local n = e - colon - 1
    local k = n + 1
    local mid = math.floor(k / 2)
    local rev, lx, l = nil, 1, nil
    if mid >= 1 then
      if string.byte(win, colon + mid) == SEAT_FREE_BYTE then
        l = mid
      else
        rev = string.reverse(string.sub(win, colon + 1, colon + mid))
        lx = string.find(rev, SEAT_FREE, 1, true)
        l = lx and mid - lx + 1
      end
    end
    local rt = string.find(win, SEAT_FREE, colon + mid + 1, true)
    rt = rt and rt < e and rt - colon or nil
    while #ids < qty and (l or rt) do
      local a
      if l and (not rt or k - 2 * l <= 2 * rt - k) then
        a = l
        rev = rev or string.reverse(string.sub(win, colon + 1, colon + mid))
        lx = string.find(rev, SEAT_FREE, lx + 1, true)
        l = lx and mid - lx + 1
      else
        a = rt
        rt = string.find(win, SEAT_FREE, colon + rt + 1, true)
        rt = rt and rt < e and rt - colon or nil
      end
      ids[#ids + 1] = string.format('%s-%d', name, a)
      pos[#pos + 1] = one + a
    end
    from = base + e - 1 -- the next row
  end
  if #ids < qty then
    return nil, nil, front
  end
  seat_order(ids, pos)
  return ids, pos, front
end

-- Sets the seats listed in `list` ("A-7,A-8") of `zone` to `ch`: a
-- reservation's seats moving to held, sold or free. Nothing for a
-- reservation without seats (a general-admission zone).
local function set_seats(index, map, zones, zone, list, ch)
  if not list or list == '' then
    return
  end
  local ids, pos, row = seat_places(index, zone, list)
  if not ids or #ids == 0 then
    return
  end
  seat_order(ids, pos)
  paint_places(map, pos, ch)
  if ch == SEAT_FREE then
    lower_fronts(zones, zone, row)
  end
end
