-- Open in-flight entries for requests about to be sent to a backend, and settle finished
-- ones, in one call (the gateway batches both kinds). Settling is one step per request:
-- afterwards exactly one of (in-flight entry, usage event) exists, never both or none.
-- KEYS[1] leases    zset    request_id -> lease expiry (Unix seconds)
-- KEYS[2] entries   hash    request_id -> in-flight entry (JSON: the usage record known so far)
-- KEYS[3] progress  hash    request_id -> "<completion tokens so far> <Unix seconds seen>"
-- KEYS[4] usage     stream  usage events for the meter
-- ARGV[1] lease expiry for the entries opened (Unix seconds)
-- ARGV[2] n, the number of entries to open
-- ARGV[3 .. 2 + 2n] pairs to open: request_id, entry JSON
-- ARGV[3 + 2n ..] pairs to settle: request_id, usage record JSON
-- Returns the request ids settled here that the reaper had already recorded (their records
-- are dropped: the reaper's stands).
local first_settle = 3 + 2 * tonumber(ARGV[2])
for i = 3, first_settle - 1, 2 do
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
local reaped = {}
for i = first_settle, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HDEL', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('XADD', KEYS[4], '*', 'kind', 'final', 'record', ARGV[i + 1])
  else
    reaped[#reaped + 1] = ARGV[i]
  end
end
return reaped
