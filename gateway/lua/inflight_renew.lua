-- Extend the leases of one gateway process's live requests and note their progress.
-- KEYS[1] leases    zset  request_id -> lease expiry
-- KEYS[2] progress  hash  request_id -> "<completion tokens so far> <Unix seconds seen>"
-- ARGV[1] new lease expiry (Unix seconds)
-- ARGV[2..] pairs: request_id, progress
-- Returns the number of leases extended; a request already reaped is not revived.
local renewed = 0
for i = 2, #ARGV, 2 do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    renewed = renewed + 1
  end
end
return renewed
