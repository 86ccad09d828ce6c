-- Close a finished request's in-flight entry and hand its usage record to the meter, as one
-- step: afterwards the in-flight entry is gone and the usage event exists.
-- The record is appended even when the entry is already gone: the reaper recorded the request
-- as `gateway_lost` while its gateway was paused or cut off from Redis (or Redis lost it), and
-- this final record, with the same request_id and started_at, replaces that guess in the ledger.
-- KEYS[1] leases    zset
-- KEYS[2] entries   hash
-- KEYS[3] progress  hash
-- KEYS[4] usage stream
-- ARGV[1] request_id
-- ARGV[2] usage record JSON
-- Returns 1, or 0 when the entry was already gone (the record is then a correction).
local open = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'kind', 'final', 'record', ARGV[2])
return open
