-- Ask for a slot on a model's backends: granted now, queued, or shed.
-- Slots are granted in priority order (lower class first) and, within a class, in order of
-- fair-queuing tags: an account's tag advances by the cost of each of its requests, so one
-- busy account cannot starve another (virtual token counter / weighted fair queuing).
-- Waiting requests are leased like running slots: their gateway renews the lease while it
-- waits, so the waiters of a gateway that died leave the queue once it lapses instead of
-- being granted slots nobody will use until their deadline.
-- KEYS (one model pool, one hash tag):
--   [1] running    zset  request_id -> slot lease expiry (ms)
--   [2] deadlines  hash  request_id -> when a waiting request gives up (ms)
--   [3] class      hash  request_id -> its priority class (waiting requests only)
--   [4] waiting:0  zset  request_id -> fair-queuing tag   ([4], [5], [6]: classes 0, 1, 2)
--   [5] waiting:1  zset
--   [6] waiting:2  zset
--   [7] tags       hash  "<class>:<account>" -> the account's latest tag in that class
--   [8] clocks     hash  class -> tag of the request last granted in that class
--   [9] leases     zset  request_id -> lease expiry of a waiting request (ms)
-- ARGV: [1] now (ms) [2] request_id [3] class (0..2) [4] account_id [5] cost (tokens)
--       [6] capacity (slots) [7] lease of a slot or a place in the queue (ms)
--       [8] queue depth limit (-1: none) [9] give up at (ms)
-- Returns 1 (granted: the slot is held), 0 (queued: wait for a grant), -1 (queue full: shed).
local now, class = tonumber(ARGV[1]), tonumber(ARGV[3])
forget_lapsed(now)

local ahead = 0
for c = 0, class do ahead = ahead + redis.call('ZCARD', KEYS[4 + c]) end
if ahead == 0 and redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[6]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[7]), ARGV[2])
  return 1
end

local depth = tonumber(ARGV[8])
if depth >= 0 and redis.call('ZCARD', KEYS[4 + class]) >= depth then
  return -1
end
local account = class .. ':' .. ARGV[4]
local clock = tonumber(redis.call('HGET', KEYS[8], class) or '0')
local last = tonumber(redis.call('HGET', KEYS[7], account) or '0')
local tag = math.max(clock, last) + tonumber(ARGV[5])
redis.call('HSET', KEYS[7], account, tag)
redis.call('ZADD', KEYS[4 + class], tag, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[9])
redis.call('HSET', KEYS[3], ARGV[2], class)
redis.call('ZADD', KEYS[9], now + tonumber(ARGV[7]), ARGV[2])
return 0
