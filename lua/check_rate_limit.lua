-- check_rate_limit: one request against a limit shared by every replica of
-- the API, by GCRA (the generic cell rate algorithm, as governor runs it in
-- memory). The key holds the theoretical arrival time (TAT): when the
-- subject's allowance would be whole again if nothing more came. A request
-- is allowed while that lies no more than `burst` intervals ahead of now.
--
-- The clock is Redis's own (TIME), so the replicas' clocks do not matter;
-- Redis 7 replicates the script's effects (the SET), not the script.
--
-- KEYS[1]  {rl:<limit>:<subject>}   the whole key is its hash tag, so it lives
--                                    in one slot and runs on a cluster
-- ARGV[1]  emission interval in microseconds (60e6 / per-minute rate)
-- ARGV[2]  burst: requests allowed at once
-- Returns  {1, 0} when allowed, or {0, retry_after_ms} when refused: the
--          milliseconds until the request would be allowed. A refusal
--          changes nothing.

local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or 0)
if tat < now then
  tat = now
end
local new_tat = tat + interval
local ahead = new_tat - now
local limit = burst * interval
if ahead > limit then
  return {0, math.ceil((ahead - limit) / 1000)}
end
-- Kept exactly as long as it takes to drain back to a whole allowance: an
-- absent key and an expired one mean the same thing.
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000))
return {1, 0}
