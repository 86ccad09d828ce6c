-- Check every limit of one account and, if all pass, count the request against all of them
-- (all or nothing). Windows slide over the last 60 s exactly (a log of entries, no fixed
-- buckets, so no 2x burst at window edges). Token limits and the budget's hard cap admit while
-- the amount used is under the limit, so a quota or a budget is exceeded by at most the
-- reservation of the request that crossed it. Money is in integer pico-units (10^-12) of
-- billing's currency, exact: INCRBY adds 64-bit integers, and amounts are only ever handled
-- here as decimal strings (Lua numbers are doubles, exact only to 2^53). The spend counter
-- saturates: at or past the ceiling it takes no more reservations.
-- KEYS (one account, one hash tag):
--   [1] requests window   zset    request_id -> admission time (ms)
--   [2] tokens window     zset    request_id -> admission time (ms)
--   [3] tokens amounts    hash    request_id -> tokens counted in the window for it
--   [4] tokens window sum string  total of [3]
--   [5] day counter       string  tokens counted today (UTC); expires after the day
--   [6] month counter     string  tokens counted this month (UTC); expires after the month
--   [7] concurrency       zset    request_id -> lease expiry (ms)
--   [8] month spend       string  pico-units spent this month (UTC); expires after the month
-- ARGV:
--   [1] now (ms)            [2] request_id          [3] tokens to reserve
--   [4] requests/minute     [5] tokens/minute       [6] tokens/day
--   [7] tokens/month        [8] concurrent requests (each limit: -1 for none)
--   [9] lease (ms)          [10] seconds to the end of the day (UTC)
--   [11] seconds to the end of the month (UTC)
--   [12] money to reserve (pico-units, decimal; 0: unpriced)
--   [13] the month's hard cap (pico-units, decimal, at most [14]; -1 for none)
--   [14] the spend counter's ceiling (pico-units, decimal)
-- Returns {admitted (1|0), reason ('' or which limit refused), retry after (ms),
--          requests in the window, ms until that window is empty, tokens in the window,
--          ms until that window is empty, money reserved (decimal string: [12], or '0' when
--          the counter is saturated or the request refused)}.
local now = tonumber(ARGV[1])
local window_start = now - 60000
local reserve = tonumber(ARGV[3])
local limits = {
  rpm = tonumber(ARGV[4]), tpm = tonumber(ARGV[5]), tpd = tonumber(ARGV[6]),
  tpmo = tonumber(ARGV[7]), concurrent = tonumber(ARGV[8]),
}
local money, cap, ceiling = ARGV[12], ARGV[13], ARGV[14]

-- a >= b, exactly, for integers in decimal as Redis writes them (b is not negative).
local function at_least(a, b)
  if string.sub(a, 1, 1) == '-' then return false end
  if #a ~= #b then return #a > #b end
  return a >= b
end

-- Forget what slid out of the windows and leases that lapsed (their gateway died).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', window_start)
-- In chunks: Lua's unpack() fails beyond a few thousand values, and a busy account can have
-- many more entries slide out at once.
while true do
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', window_start, 'LIMIT', 0, 1000)
  if #expired == 0 then break end
  local total = 0
  for _, amount in ipairs(redis.call('HMGET', KEYS[3], unpack(expired))) do
    total = total + (tonumber(amount) or 0)
  end
  redis.call('DECRBY', KEYS[4], total)
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREM', KEYS[2], unpack(expired))
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)

local requests = redis.call('ZCARD', KEYS[1])
local tokens = tonumber(redis.call('GET', KEYS[4]) or '0')
local today = tonumber(redis.call('GET', KEYS[5]) or '0')
local month = tonumber(redis.call('GET', KEYS[6]) or '0')
local running = redis.call('ZCARD', KEYS[7])
local spent = redis.call('GET', KEYS[8]) or '0'

-- When a window is empty again, its limit back to its initial state (ms from now).
local function window_reset(key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + 60000 - now
end

-- When the oldest request leaves the window, making room for one more (ms from now).
local function requests_retry()
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + 60000 - now
end

-- When enough tokens leave the window for the amount used to fall under the limit (ms).
local function tokens_retry(limit)
  local left, start = tokens, 0
  while true do
    local entries = redis.call('ZRANGE', KEYS[2], start, start + 499, 'WITHSCORES')
    if #entries == 0 then return 60000 end
    for i = 1, #entries, 2 do
      left = left - (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
      if left < limit then return tonumber(entries[i + 1]) + 60000 - now end
    end
    start = start + 500
  end
end

local function refuse(reason, retry_after)
  return {0, reason, math.max(retry_after, 1), requests, window_reset(KEYS[1]), tokens,
          window_reset(KEYS[2]), '0'}
end

if limits.concurrent >= 0 and running >= limits.concurrent then
  return refuse('concurrent', 1000)
end
if limits.rpm >= 0 and requests >= limits.rpm then
  return refuse('requests', requests_retry())
end
if limits.tpm >= 0 and tokens >= limits.tpm then
  return refuse('tokens', tokens_retry(limits.tpm))
end
if limits.tpd >= 0 and today >= limits.tpd then
  return refuse('tokens_per_day', tonumber(ARGV[10]) * 1000)
end
if limits.tpmo >= 0 and month >= limits.tpmo then
  return refuse('tokens_per_month', tonumber(ARGV[11]) * 1000)
end
if cap ~= '-1' and at_least(spent, cap) then
  return refuse('budget', tonumber(ARGV[11]) * 1000)
end

redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], reserve)
redis.call('INCRBY', KEYS[4], reserve)
-- Period counters are named by their period; expiry (an hour after it ends) only frees memory.
redis.call('INCRBY', KEYS[5], reserve)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[10]) + 3600)
redis.call('INCRBY', KEYS[6], reserve)
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[11]) + 3600)
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[9]), ARGV[2])
-- Even at 0: a request reserved at nothing may still cost something when it settles, and a
-- settle only counts into a period whose key lives.
if at_least(spent, ceiling) then money = '0' end
redis.call('INCRBY', KEYS[8], money)
redis.call('EXPIRE', KEYS[8], tonumber(ARGV[11]) + 3600)
requests = requests + 1
tokens = tokens + reserve
-- The window keys expire a minute after their newest entry.
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], 61000) end
redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[9]) + 1000)
return {1, '', 0, requests, window_reset(KEYS[1]), tokens, window_reset(KEYS[2]), money}
