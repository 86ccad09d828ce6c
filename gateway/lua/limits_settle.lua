-- Settle a finished request against the limits it was admitted under, at each level (the
-- account's and, where admitted with it, its project's): replace its token reservation by the
-- tokens it actually used and its money reservation by what they cost (refunding the
-- difference, or charging the excess), and free its concurrency slot. A level where a window
-- or slot did not count it (a project without that limit) has nothing there to change.
-- Money is in pico-units, as decimal strings (see limits_admit.lua): the caller computes each
-- level's difference exactly, INCRBY adds it; an excess is not added to a counter at its
-- ceiling.
-- KEYS: the eight or sixteen keys the request was admitted with (see limits_admit.lua).
-- ARGV: [1] request_id  [2] reserved tokens  [3] tokens actually used
--       [4] what the request cost minus the money reserved for it at the account (pico-units,
--           decimal)
--       [5] the spend counter's ceiling (pico-units, decimal)
--       [6] the same difference as [4] at the project (with sixteen keys)
-- Returns the change applied to the token counters (used - reserved).
local delta = tonumber(ARGV[3]) - tonumber(ARGV[2])
settle_level(0, ARGV[1], delta, ARGV[4], ARGV[5])
if #KEYS == 16 then settle_level(8, ARGV[1], delta, ARGV[6], ARGV[5]) end
return delta
