-- Close a finished request's in-flight entry and hand its usage record to the meter, as one
-- step: afterwards exactly one of (in-flight entry, usage event) exists, never both or none.
-- KEYS[1] leases    zset
-- KEYS[2] entries   hash
-- KEYS[3] progress  hash
-- KEYS[4] usage stream
-- ARGV[1] request_id
-- ARGV[2] usage record JSON
-- Returns 1, or 0 when the reaper already recorded the request (this record is dropped).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'kind', 'final', 'record', ARGV[2])
return 1
