-- Settle a finished request against the limits it was admitted under: replace its token
-- reservation by the tokens it actually used and its money reservation by what they cost
-- (refunding the difference, or charging the excess), and free its concurrency slot.
-- KEYS: the eight keys the request was admitted with (see limits_admit.lua).
-- ARGV: [1] request_id  [2] reserved tokens  [3] tokens actually used
--       [4] reserved money (micro-units)  [5] what the request cost (micro-units)
-- Returns the change applied to the token counters (used - reserved).
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], delta)
  redis.call('INCRBY', KEYS[4], delta)
end
-- Period counters only change while their key lives (an expired period stays closed).
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('INCRBY', KEYS[5], delta) end
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('INCRBY', KEYS[6], delta) end
local money = tonumber(ARGV[5]) - tonumber(ARGV[4])
if money ~= 0 and redis.call('EXISTS', KEYS[8]) == 1 then
  redis.call('INCRBY', KEYS[8], money)
end
redis.call('ZREM', KEYS[7], ARGV[1])
return delta
