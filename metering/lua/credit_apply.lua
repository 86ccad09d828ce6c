-- Adds ledger movements to a prepaid account's credit balance, each exactly once: an entry
-- whose id is in the applied set already changes nothing, so billing may send it again
-- (after a lost reply, from the sweep) without counting it twice.
-- KEYS[1] the balance counter, integer pico-units ({a:<id>}:credit-pico)
-- KEYS[2] the set of entry ids applied to it ({a:<id>}:credit-applied)
-- ARGV: pairs of (entry id, signed amount in pico-units as a decimal string: INCRBY reads
--       it as a 64-bit integer, never as a Lua double)
-- Returns the balance after, as a decimal string.
for i = 1, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('INCRBY', KEYS[1], ARGV[i + 1])
  end
end
return tostring(redis.call('GET', KEYS[1]) or '0')
