-- lib/seats: a seated zone's seats, prepended to the scripts that hold,
-- confirm, cancel and expire reservations.
--
-- A sale's seats live in one hash, {sale:<id>}:seats, two fields per seated
-- zone:
--   <zone>:rows  the layout, "A:20,B:22": rows front to back, seats per row
--   <zone>:map   one character per seat, in layout order (row A's seats
--                1..20, then row B's...): '.' free, 'h' held, 's' sold
-- A seat's index is its row's offset plus its number. The map is the whole
-- truth of the zone's seats; each reservation lists its own seats (its
-- `seats` field, "A-7,A-8"), so a reservation that ends knows which to free.

-- The rows of a layout: a list of {name, seats, offset} and a map from name.
local function seat_rows(layout)
  local rows, by_name, offset = {}, {}, 0
  for name, n in string.gmatch(layout, '([^:,]+):(%d+)') do
    local row = {name = name, seats = tonumber(n), offset = offset}
    rows[#rows + 1] = row
    by_name[name] = row
    offset = offset + row.seats
  end
  return rows, by_name
end

-- The map index of seat id "<row>-<number>", or nil when there is no such seat.
local function seat_index(by_name, id)
  local name, n = string.match(id, '^([^-]+)%-([1-9]%d*)$')
  local row = name and by_name[name]
  if not row then
    return nil
  end
  n = tonumber(n)
  if n > row.seats then
    return nil
  end
  return row.offset + n
end

-- The map with the seats at `indexes` (sorted, distinct) set to `ch`.
local function paint_seats(map, indexes, ch)
  local parts, prev = {}, 0
  for _, i in ipairs(indexes) do
    parts[#parts + 1] = string.sub(map, prev + 1, i - 1)
    parts[#parts + 1] = ch
    prev = i
  end
  parts[#parts + 1] = string.sub(map, prev + 1)
  return table.concat(parts)
end

-- Sets the seats listed in `list` ("A-7,A-8") of `zone` to `ch`: a
-- reservation's seats moving to held, sold or free. Nothing for a
-- reservation without seats (a general-admission zone).
local function set_seats(key, zone, list, ch)
  if not list or list == '' then
    return
  end
  local s = redis.call('HMGET', key, zone .. ':rows', zone .. ':map')
  if not s[1] then
    return
  end
  local _, by_name = seat_rows(s[1])
  local indexes = {}
  for id in string.gmatch(list, '[^,]+') do
    local i = seat_index(by_name, id)
    if i then
      indexes[#indexes + 1] = i
    end
  end
  table.sort(indexes)
  redis.call('HSET', key, zone .. ':map', paint_seats(s[2], indexes, ch))
end
