-- Settle a finished request against the limits it was admitted under: replace its token
-- reservation by the tokens it actually used and its money reservation by what they cost
-- (refunding the difference, or charging the excess), and free its concurrency slot.
-- Money is in pico-units, as decimal strings (see limits_admit.lua): the caller computes the
-- difference exactly, INCRBY adds it; an excess is not added to a counter at its ceiling.
-- KEYS: the eight keys the request was admitted with (see limits_admit.lua).
-- ARGV: [1] request_id  [2] reserved tokens  [3] tokens actually used
--       [4] what the request cost minus the money reserved for it (pico-units, decimal)
--       [5] the spend counter's ceiling (pico-units, decimal)
-- Returns the change applied to the token counters (used - reserved).
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], delta)
  redis.call('INCRBY', KEYS[4], delta)
end
-- Period counters only change while their key lives (an expired period stays closed).
if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('INCRBY', KEYS[5], delta) end
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('INCRBY', KEYS[6], delta) end

-- a >= b, exactly, for integers in decimal as Redis writes them (b is not negative).
local function at_least(a, b)
  if string.sub(a, 1, 1) == '-' then return false end
  if #a ~= #b then return #a > #b end
  return a >= b
end

local money = ARGV[4]
local spent = redis.call('GET', KEYS[8])
if money ~= '0' and spent
    and (string.sub(money, 1, 1) == '-' or not at_least(spent, ARGV[5])) then
  redis.call('INCRBY', KEYS[8], money)
end
redis.call('ZREM', KEYS[7], ARGV[1])
return delta
