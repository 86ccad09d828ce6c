-- Close finished requests' in-flight entries and hand their usage records to the meter. Each
-- request is one step: afterwards exactly one of (in-flight entry, usage event) exists.
-- KEYS[1] leases    zset
-- KEYS[2] entries   hash
-- KEYS[3] progress  hash
-- KEYS[4] usage stream
-- ARGV pairs: request_id, usage record JSON
-- Returns the request ids that the reaper had already recorded (their records are dropped).
local reaped = {}
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('XADD', KEYS[4], '*', 'kind', 'final', 'record', ARGV[i + 1])
  else
    reaped[#reaped + 1] = ARGV[i]
  end
end
return reaped
