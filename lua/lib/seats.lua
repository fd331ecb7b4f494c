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
--                   none; absent: the zone's first row; the zone's
--                   closing '|': none left. A search moves it on; seats
--                   made free move it back.
--   <zone>:fmax     the largest q with such a field
-- Each reservation lists its own seats (its `seats` field, "A-7,A-8"), so a
-- reservation that ends knows which to free.
--
-- A seated hold costs a few Redis calls more than a general-admission one
-- (the row index, a window of the map, the write of its seats), and the
-- code here avoids making Lua strings, tables and closures it does not
-- need: on a 2.8 GHz Xeon a Redis call costs a microsecond or more, a new
-- string or table a fifth of one, and a function made inside a script (a
-- closure over its locals) more than either.

local SEAT_FREE, SEAT_HELD, SEAT_SOLD = '.', '*', '#'
local SEAT_FREE_BYTE, SEAT_NONE_BYTE = 46, 95 -- '.', '_'
-- Bytes read at a time: a search starts small (the row it starts at is
-- usually the one it wants, and Redis hands a script its bytes at about a
-- microsecond a half kilobyte) and doubles each window up to SEAT_WINDOW.
-- A row is at most 1,006 bytes (a 4-character name and 1,000 seats), so the
-- largest window always holds a whole row.
local SEAT_FIRST_WINDOW, SEAT_WINDOW = 256, 4096

local function seat_int(n) return string.format('%d', n) end

-- Where seats of `zone` are. `t` holds each seat's row name and number
-- (as text) in turn from t[at]: seat k's are t[at + 2k - 2] and
-- t[at + 2k - 1]. Returns the n seats' positions in the map, in that order,
-- and where the first of their rows starts; or nil and the first id that
-- names no row and number. Seats of one row (the usual hold) take one HGET
-- of the index, others one HMGET.
-- (The API lets only plain ids through: a row, '-', a number from 1.)
local function seat_places(index, zone, t, at, n)
  local pos, one_row = {}, true
  for k = 2, n do
    if t[at + 2 * k - 2] ~= t[at] then
      one_row = false
      break
    end
  end
  local rows, slot
  if one_row then
    rows = {redis.call('HGET', index, zone .. ':r:' .. t[at])}
  else
    local fields
    fields, slot = {}, {}
    for k = 1, n do
      local name = t[at + 2 * k - 2]
      if not slot[name] then
        fields[#fields + 1] = zone .. ':r:' .. name
        slot[name] = #fields
      end
    end
    rows = redis.call('HMGET', index, unpack(fields))
  end
  local row
  for k = 1, n do
    local name, num = t[at + 2 * k - 2], t[at + 2 * k - 1]
    -- first * 2048 + numbers (lib/seats: a row has at most 1,000)
    local r, p = tonumber(rows[one_row and 1 or slot[name]]), tonumber(num)
    if not r or not p or p < 1 or p > r % 2048 then
      return nil, name .. '-' .. num
    end
    local first = (r - r % 2048) / 2048
    pos[k] = first + p - 1
    local start = first - #name - 2
    if not row or start < row then
      row = start
    end
  end
  return pos, row
end

-- A list of seats ("A-7,A-8") as seat_places reads it: a row name and a
-- number in turn, and how many seats.
local function seat_parts(list)
  local t, n = {}, 0
  for name, num in string.gmatch(list, '([^,-]+)%-([^,]*)') do
    t[2 * n + 1], t[2 * n + 2] = name, num
    n = n + 1
  end
  return t, n
end

-- Whether `pos` is in map order already (as a buyer usually lists seats).
local function seat_in_order(pos)
  for i = 2, #pos do
    if pos[i] < pos[i - 1] then
      return false
    end
  end
  return true
end

-- Sorts pos into map order, in place, and returns the seats' list in that
-- order ("A-7,A-8"), their names and numbers read as seat_places does.
local function seat_order(pos, t, at)
  local ids = {}
  for k = 1, #pos do
    ids[k] = t[at + 2 * k - 2] .. '-' .. t[at + 2 * k - 1]
  end
  for i = 2, #pos do
    local p, id, j = pos[i], ids[i], i - 1
    while j > 0 and pos[j] > p do
      pos[j + 1], ids[j + 1] = pos[j], ids[j]
      j = j - 1
    end
    pos[j + 1], ids[j + 1] = p, id
  end
  return table.concat(ids, ',')
end

-- The bytes from position lo to hi of the map, when they span less than a
-- window (the seats of one row always do), else nil.
local function seat_span_bytes(map, pos)
  local lo, hi = pos[1], pos[1]
  for k = 2, #pos do
    if pos[k] < lo then
      lo = pos[k]
    elseif pos[k] > hi then
      hi = pos[k]
    end
  end
  if hi - lo < SEAT_WINDOW then
    return redis.call('GETRANGE', map, lo - 1, hi - 1), lo
  end
  return nil, lo
end

-- Writes `ch` at the positions `pos` (map order), all within `s`, the
-- map's bytes read from position `lo`: one SETRANGE, from the first to the
-- last, of s with those bytes changed (the bytes between are written back
-- as they were read, in the same atomic step).
local function paint_within(map, s, lo, pos, ch)
  local out = ch
  for k = 2, #pos do
    out = out .. string.sub(s, pos[k - 1] - lo + 2, pos[k] - lo) .. ch
  end
  redis.call('SETRANGE', map, pos[1] - 1, out)
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

-- A search for q seats (text) moved its front from `was` to `front` (they
-- differ): the fields to write with the counters, added to `fields` (a
-- table, or nil), and the largest q whose front is new (`fresh`, or this q
-- when it is new).
local function front_moved(fields, zone, q, was, front, fresh)
  fields = fields or {}
  fields[#fields + 1] = zone .. ':f' .. q
  fields[#fields + 1] = seat_int(front)
  if not was and (not fresh or tonumber(q) > tonumber(fresh)) then
    fresh = q
  end
  return fields, fresh
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
    local win_last = from + size - 1
    if win_last > last then
      win_last = last
    end
    if size < SEAT_WINDOW then
      size = 2 * size
    end
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

-- The last start, from `from` to `to` (positions in s, within one row), of
-- `block` (n free seats side by side); nil when there is none. A plain
-- search and an anchored match for each run of free seats, so a row costs
-- what its runs cost, not its length; past four runs the rest is searched
-- backwards from `to`, in its bytes reversed.
local function last_block(s, block, n, from, to)
  local last, runs = nil, 0
  local p = string.find(s, block, from, true)
  while p and p <= to do
    runs = runs + 1
    if runs > 4 then
      -- A block at p..p+n-1: one is found. At i in the reversed bytes
      -- starts the block whose first seat is at to + 1 - i in s.
      return to + 1 - string.find(string.reverse(string.sub(s, p, to + n - 1)), block, 1, true)
    end
    local _, run_end = string.find(s, '^%.*', p)
    last = run_end - n + 1
    if last > to then
      last = to
    end
    p = string.find(s, block, run_end + 1, true)
  end
  return last
end

-- The last free seat from `from` to `to` (positions in s, within one row),
-- or nil. `near` (or nil) is where it is likely to be: a row fills from its
-- middle out, so the nearest free seat left of the middle mirrors the
-- nearest right of it. From `near`, plain searches forward find it in two
-- steps when the guess is good; otherwise, or past a few steps, it is
-- searched backwards from `to`, 16 bytes first, then four times as many
-- each time.
local function last_free(s, from, to, near)
  if near and near >= from and near <= to then
    local p = string.find(s, SEAT_FREE, near, true)
    if p and p <= to then
      for _ = 1, 4 do
        local q = string.find(s, SEAT_FREE, p + 1, true)
        if not q or q > to then
          return p
        end
        p = q
      end
      -- Many free seats after the guess: search back from `to`.
    elseif near > from then
      -- None from the guess on: search back from before it.
      to = near - 1
    end
  end
  local size = 16
  while to >= from do
    local lo = to - size + 1
    if lo < from then
      lo = from
    end
    -- At i in the bytes reversed is the seat at to + 1 - i.
    local i = string.find(string.reverse(string.sub(s, lo, to)), SEAT_FREE, 1, true)
    if i then
      return to + 1 - i
    end
    to, size = lo - 1, 4 * size
  end
  return nil
end

-- The best `qty` free seats side by side in one row of the zone, searched
-- from `from` to `last` (the zone's closing '|'): the first row from the
-- front with such a block, and in it the block whose middle is nearest the
-- row's (the lower on a tie). Returns their list ("A-7,A-8"), what holding
-- them writes (a SETRANGE's offset and bytes) and the row they are in; or
-- nil when there is no such block.
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
  local mid = (k - k % 2) / 2
  local best = string.find(win, block, colon + mid, true)
  best = best and best + qty - 1 < e and best - colon
  if best ~= mid and mid > 1 and (not best or 2 * best - k >= k - 2 * mid + 2) then
    -- Nothing at mid, and a start left of it may be nearer: the nearest
    -- such.
    local left = last_block(win, block, qty, colon + 1, colon + mid - 1)
    left = left and left - colon
    if left and (not best or k - 2 * left <= 2 * best - k) then
      best = left
    end
  end
  local name = string.sub(win, r + 1, colon - 1)
  local list
  if qty <= 4 then
    -- One string made, not two a seat (string.format leaves the arguments
    -- its format does not ask for).
    list = string.format('%s-%d' .. string.rep(',%s-%d', qty - 1), name, best, name, best + 1, name, best + 2,
      name, best + 3)
  else
    list = name .. '-' .. seat_int(best)
    for a = best + 1, best + qty - 1 do
      list = list .. ',' .. name .. '-' .. seat_int(a)
    end
  end
  -- Seat s is at base + colon - 1 + s in the map.
  return list, {base + colon + best - 2, qty == 1 and SEAT_HELD or string.rep(SEAT_HELD, qty)}, base + r - 1
end

-- The best `qty` free seats, not necessarily together, searched from
-- `from` to `last`: row by row from the front, each row's from its middle
-- out (the lower seat on a tie). Returns their list ("A-7,A-9", map order),
-- what holding them writes (a SETRANGE's offset and bytes for each row:
-- the row's bytes from its first seat taken to its last, as read, with
-- those seats held) and the first row with a free seat; or nil when fewer
-- are free.
local function best_any(map, qty, from, last)
  local list, writes, got, front = nil, {}, 0, nil
  while got < qty do
    local win, r, e, base = seat_row_with(map, from, last, SEAT_FREE)
    if not win then
      break
    end
    front = front or base + r - 1
    local colon = string.find(win, ':', r + 2, true)
    -- Seat a (at colon + a in win) is |2a - k| from the middle: walk out
    -- from it both ways, free seat to free seat: l the next free seat on
    -- the left (mid itself first), rt on the right.
    local n = e - colon - 1
    local k = n + 1
    local mid = (k - k % 2) / 2
    local rt = string.find(win, SEAT_FREE, colon + mid + 1, true)
    rt = rt and rt < e and rt - colon or nil
    local l = mid >= 1 and last_free(win, colon + 1, colon + mid, rt and colon + k - rt)
    l = l and l - colon
    -- The seats taken in this row, put in seat order as they come. The
    -- side a seat was taken from moves on only when another is wanted.
    local seats, side = {}, nil
    while got < qty do
      if side == 1 then
        l = l > 1 and last_free(win, colon + 1, colon + l - 1, rt and colon + k - rt)
        l = l and l - colon
      elseif side == 2 then
        rt = string.find(win, SEAT_FREE, colon + rt + 1, true)
        rt = rt and rt < e and rt - colon or nil
      end
      if not (l or rt) then
        break
      end
      local a
      if l and (not rt or k - 2 * l <= 2 * rt - k) then
        a, side = l, 1
      else
        a, side = rt, 2
      end
      local j = #seats
      while j > 0 and seats[j] > a do
        seats[j + 1] = seats[j]
        j = j - 1
      end
      seats[j + 1] = a
      got = got + 1
    end
    -- Their list, and one write from the first to the last (the bytes
    -- between written back as they were read: cheaper than a second write).
    if #seats > 0 then
      local name = string.sub(win, r + 1, colon - 1)
      local ids
      if #seats <= 4 then
        ids = string.format('%s-%d' .. string.rep(',%s-%d', #seats - 1), name, seats[1], name, seats[2], name,
          seats[3], name, seats[4])
      else
        ids = name .. '-' .. seat_int(seats[1])
        for i = 2, #seats do
          ids = ids .. ',' .. name .. '-' .. seat_int(seats[i])
        end
      end
      list = list and list .. ',' .. ids or ids
      local out = SEAT_HELD
      for i = 2, #seats do
        out = out .. string.sub(win, colon + seats[i - 1] + 1, colon + seats[i] - 1) .. SEAT_HELD
      end
      writes[#writes + 1] = base + colon + seats[1] - 2
      writes[#writes + 1] = out
    end
    from = base + e - 1 -- the next row
  end
  if got < qty then
    return nil, nil, front
  end
  return list, writes, front
end

-- Sets the seats listed in `list` ("A-7,A-8") of `zone` to `ch`: a
-- reservation's seats moving to held, sold or free. Nothing for a
-- reservation without seats (a general-admission zone).
local function set_seats(index, map, zones, zone, list, ch)
  if not list or list == '' then
    return
  end
  local t, n = seat_parts(list)
  local pos, row = seat_places(index, zone, t, 1, n)
  if not pos or n == 0 then
    return
  end
  if not seat_in_order(pos) then
    seat_order(pos, t, 1)
  end
  paint_places(map, pos, ch)
  if ch == SEAT_FREE then
    lower_fronts(zones, zone, row)
  end
end
