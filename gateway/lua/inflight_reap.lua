-- Record the requests whose gateway stopped renewing their lease (it died or hung).
-- KEYS[1] leases    zset
-- KEYS[2] entries   hash
-- KEYS[3] progress  hash
-- KEYS[4] usage stream
-- ARGV[1] now (Unix seconds)
-- ARGV[2] most requests to reap in this call
-- Returns the number of requests reaped; each became one `lost` usage event.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, request_id in ipairs(expired) do
  local entry = redis.call('HGET', KEYS[2], request_id)
  local progress = redis.call('HGET', KEYS[3], request_id) or ''
  redis.call('ZREM', KEYS[1], request_id)
  redis.call('HDEL', KEYS[2], request_id)
  redis.call('HDEL', KEYS[3], request_id)
  if entry then
    redis.call('XADD', KEYS[4], '*', 'kind', 'lost', 'record', entry, 'progress', progress)
  end
end
return #expired
