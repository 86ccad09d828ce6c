-- Open a request's in-flight entry before anything is sent to a backend.
-- KEYS[1] leases   zset  request_id -> lease expiry (Unix seconds)
-- KEYS[2] entries  hash  request_id -> in-flight entry (JSON: the usage record known so far)
-- ARGV[1] request_id
-- ARGV[2] lease expiry (Unix seconds)
-- ARGV[3] entry JSON
-- Returns 1.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
