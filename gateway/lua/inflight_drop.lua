-- Remove the in-flight entry of a request that will not be served: the gateway opens the entry
-- in the admission's round trip, so a request its limits refused, or the queue shed, leaves
-- no usage (it is not billed).
-- KEYS[1] leases    zset
-- KEYS[2] entries   hash
-- KEYS[3] progress  hash
-- ARGV[1] request_id
-- Returns 1, or 0 where the entry was already gone.
local open = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return open
