-- Functions the limits scripts share (gateway/lua/limits_*.lua; metering/redis_scripts.py puts
-- this file before each of them). A level's eight keys start at KEYS[k + 1]: the account's at
-- k = 0, its project's at k = 8 (the layout of limits_admit.lua).

-- a >= b, exactly, for integers in decimal as Redis writes them (b is not negative).
local function at_least(a, b)
  if string.sub(a, 1, 1) == '-' then return false end
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- Forget what slid out of a level's windows and the leases that lapsed (their gateway died).
local function slide(k, now)
  local window_start = now - 60000
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', window_start)
  -- In chunks: Lua's unpack() fails beyond a few thousand values, and a busy account can
  -- have many more entries slide out at once.
  while true do
    local expired = redis.call('ZRANGEBYSCORE', KEYS[k + 2], '-inf', window_start, 'LIMIT', 0, 1000)
    if #expired == 0 then break end
    local total = 0
    for _, amount in ipairs(redis.call('HMGET', KEYS[k + 3], unpack(expired))) do
      total = total + (tonumber(amount) or 0)
    end
    redis.call('DECRBY', KEYS[k + 4], total)
    redis.call('HDEL', KEYS[k + 3], unpack(expired))
    redis.call('ZREM', KEYS[k + 2], unpack(expired))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 7], '-inf', now)
end

-- Swap one level's reservation for what was used: tokens (delta = used - reserved) and money
-- (a decimal string, the caller's exact difference; an excess is not added to a counter at
-- its ceiling), and free its slot.
local function settle_level(k, request_id, delta, money, ceiling)
  if redis.call('HEXISTS', KEYS[k + 3], request_id) == 1 then
    redis.call('HINCRBY', KEYS[k + 3], request_id, delta)
    redis.call('INCRBY', KEYS[k + 4], delta)
  end
  -- Period counters only change while their key lives (an expired period stays closed).
  if redis.call('EXISTS', KEYS[k + 5]) == 1 then redis.call('INCRBY', KEYS[k + 5], delta) end
  if redis.call('EXISTS', KEYS[k + 6]) == 1 then redis.call('INCRBY', KEYS[k + 6], delta) end
  local spent = redis.call('GET', KEYS[k + 8])
  if money ~= '0' and spent
      and (string.sub(money, 1, 1) == '-' or not at_least(spent, ceiling)) then
    redis.call('INCRBY', KEYS[k + 8], money)
  end
  redis.call('ZREM', KEYS[k + 7], request_id)
end
