-- Open in-flight entries for requests about to be sent to a backend (a batch of them).
-- KEYS[1] leases   zset  request_id -> lease expiry (Unix seconds)
-- KEYS[2] entries  hash  request_id -> in-flight entry (JSON: the usage record known so far)
-- ARGV[1] lease expiry (Unix seconds)
-- ARGV[2..] pairs: request_id, entry JSON
-- Returns the number of entries opened.
for i = 2, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return (#ARGV - 1) / 2
