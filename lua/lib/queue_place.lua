-- lib/queue_place: how a waiting buyer's entry in {sale:<id>}:waiting is
-- scored. Prepended to the scripts that read or write the waiting line
-- (join_queue, queue_status, release_batch).
--
-- One sorted-set entry holds both the buyer's place and when the buyer was
-- last seen, so a waiting buyer costs Redis one entry and nothing else:
--
--   score = place * 4096 + seen
--
-- place  before opening, the top 40 bits of the buyer's pre-queue draw
--        (0 .. 2^40 - 1); after opening, 2^40 + the arrival counter. A place
--        is fixed at join.
-- seen   the second of the buyer's last poll, modulo 4096 (it wraps every
--        68 minutes; the idle limit is far below that).
--
-- Order by score is order by place: seen never reaches the next place. Scores
-- stay below 2^53, exact in a double (Lua's numbers and Redis's scores), for
-- the first 2^40 arrivals after opening.

local SEEN_SLOTS = 4096
local AFTER_OPENING = 1099511627776 -- 2^40

local function seen_now(now_ms)
  return math.floor(now_ms / 1000) % SEEN_SLOTS
end

local function place_of(score)
  return math.floor(score / SEEN_SLOTS)
end

local function score_at(place, now_ms)
  return place * SEEN_SLOTS + seen_now(now_ms)
end

-- Milliseconds since the buyer behind `score` was last seen, to the second.
local function unseen_ms(score, now_ms)
  return ((seen_now(now_ms) - score % SEEN_SLOTS) % SEEN_SLOTS) * 1000
end

-- A score as Redis and this code read it back exactly (no exponent).
local function score_text(score)
  return string.format('%.0f', score)
end

