-- A request leaves the pool (finished, failed, or gave up waiting), and the freed capacity goes
-- to the waiting requests: highest class first, lowest fair-queuing tag first. Each grant is
-- published on the pool's channel so the gateway holding that request wakes it. Waiters whose
-- lease lapsed (their gateway died) leave first and are never granted.
-- KEYS: [1..9] as in queue_enter.lua; [10] grants channel
-- ARGV: [1] now (ms) [2] request_id ('' to only hand out free capacity) [3] capacity
--       [4] slot lease (ms)
--       [5] 'release' (done with its slot) or 'cancel' (gives up waiting)
-- Returns {what happened to request_id: 'released', 'cancelled', 'granted' (a cancel that
--          came too late: it holds a slot now and should use it) or 'unknown';
--          then the ids granted a slot by this call}.
local now = tonumber(ARGV[1])
local id = ARGV[2]
local outcome = 'unknown'
if id ~= '' then
  if redis.call('ZSCORE', KEYS[1], id) then
    if ARGV[5] == 'cancel' then
      outcome = 'granted'
    else
      redis.call('ZREM', KEYS[1], id)
      outcome = 'released'
    end
  else
    local class = redis.call('HGET', KEYS[3], id)
    if class then
      redis.call('ZREM', KEYS[4 + tonumber(class)], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
      redis.call('ZREM', KEYS[9], id)
      outcome = 'cancelled'
    end
  end
end

forget_lapsed(now)

local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local granted = {}
for class = 0, 2 do
  while free > 0 do
    local head = redis.call('ZRANGE', KEYS[4 + class], 0, 0, 'WITHSCORES')
    if #head == 0 then break end
    local waiting, tag = head[1], head[2]
    -- The slot keeps the waiter's lease, which its gateway renews until it takes the slot
    -- over; a waiter queued by an older release has none and gets a fresh one.
    local lease = tonumber(redis.call('ZSCORE', KEYS[9], waiting) or (now + tonumber(ARGV[4])))
    local deadline = tonumber(redis.call('HGET', KEYS[2], waiting) or '0')
    redis.call('ZREM', KEYS[4 + class], waiting)
    redis.call('HDEL', KEYS[2], waiting)
    redis.call('HDEL', KEYS[3], waiting)
    redis.call('ZREM', KEYS[9], waiting)
    -- A waiter past its deadline has given up: skip it.
    if deadline > now then
      redis.call('ZADD', KEYS[1], lease, waiting)
      redis.call('HSET', KEYS[8], class, tag)
      redis.call('PUBLISH', KEYS[10], waiting)
      granted[#granted + 1] = waiting
      free = free - 1
    end
  end
end
return {outcome, unpack(granted)}
