-- Shared by queue_enter.lua and queue_leave.lua (prepended to each: metering/redis_scripts.py):
-- forget what a dead gateway left in the pool, slots whose lease lapsed and waiters whose lease
-- lapsed, so that neither counts against capacity nor is ever granted. KEYS as in
-- queue_enter.lua.
local function forget_lapsed(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  -- In chunks: Lua's unpack() fails beyond a few thousand values.
  while true do
    local lapsed = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', now, 'LIMIT', 0, 500)
    if #lapsed == 0 then break end
    local classes = redis.call('HMGET', KEYS[3], unpack(lapsed))
    for i, waiting in ipairs(lapsed) do
      if classes[i] then redis.call('ZREM', KEYS[4 + tonumber(classes[i])], waiting) end
    end
    redis.call('HDEL', KEYS[2], unpack(lapsed))
    redis.call('HDEL', KEYS[3], unpack(lapsed))
    redis.call('ZREM', KEYS[9], unpack(lapsed))
  end
end
