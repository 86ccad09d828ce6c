-- Settle a finished request against the limits it was admitted under, at each level (the
-- account's and, where admitted with it, its project's): replace its token reservation by the
-- tokens it actually used and its money reservation by what they cost (refunding the
-- difference, or charging the excess), and free its concurrency slot. A level where a window
-- or slot did not count it (a project without that limit) has nothing there to change.
-- Money is in pico-units, as decimal strings (see limits_admit.lua): the caller computes each
-- level's difference exactly, INCRBY adds it; an excess is not added to a counter at its
-- ceiling.
-- A prepaid account's credit reservation is given back and what the request cost taken off
-- the balance, while the balance lives. A request whose reservation is not held (Redis lost
-- its data, and billing rebuilt the balance from the ledger without it) has only its cost
-- taken: never credit given back that was not taken.
-- KEYS: the keys the request was admitted with (see limits_admit.lua): eight or sixteen, then
--       the two credit keys for a prepaid account.
-- ARGV: [1] request_id  [2] reserved tokens  [3] tokens actually used
--       [4] what the request cost minus the money reserved for it at the account (pico-units,
--           decimal)
--       [5] the spend counter's ceiling (pico-units, decimal)
--       [6] the same difference as [4] at the project ('0' without a project level)
--       [7] what the request cost (pico-units, decimal; prepaid accounts)
-- Returns the change applied to the token counters (used - reserved).
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
local levels = #KEYS - #KEYS % 8
settle_level(0, ARGV[1], delta, ARGV[4], ARGV[5])
if levels == 16 then settle_level(8, ARGV[1], delta, ARGV[6], ARGV[5]) end
if #KEYS % 8 == 2 then
  local balance, held = KEYS[levels + 1], KEYS[levels + 2]
  local reserved = redis.call('HGET', held, ARGV[1])
  if reserved then redis.call('HDEL', held, ARGV[1]) end
  if redis.call('EXISTS', balance) == 1 then
    -- Two exact integer steps: a difference computed here would be a double.
    redis.call('INCRBY', balance, reserved or '0')
    redis.call('DECRBY', balance, ARGV[7])
  end
end
return delta
