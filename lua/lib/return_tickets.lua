-- lib/return_tickets: prepended to the scripts that end a hold without
-- confirming it (confirm_hold when the deadline has passed,
-- cancel_reservation, expire_holds), so the three give tickets back the
-- same way: the zone's held tickets become available again, the buyer's
-- count for the per-user limit goes down, and the hold's seats (if its zone
-- is seated: lib/seats, prepended before this) are free again.

local function return_tickets(zones, buyer, zone, qty, index, map, seats)
  redis.call('HINCRBY', zones, zone .. ':held', -qty)
  redis.call('HINCRBY', zones, zone .. ':avail', qty)
  redis.call('HINCRBY', buyer, 'tickets', -qty)
  set_seats(index, map, zones, zone, seats, SEAT_FREE)
end
