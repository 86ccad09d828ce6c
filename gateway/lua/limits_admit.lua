-- Check every limit of one account and, if all pass, count the request against all of them
-- (all or nothing). Windows slide over the last 60 s exactly (a log of entries, no fixed
-- buckets, so no 2x burst at window edges). Token limits admit while the amount used is under
-- the limit, so a quota is exceeded by at most the reservation of the request that crossed it.
-- KEYS (one account, one hash tag):
--   [1] requests window   zset    request_id -> admission time (ms)
--   [2] tokens window     zset    request_id -> admission time (ms)
--   [3] tokens amounts    hash    request_id -> tokens counted in the window for it
--   [4] tokens window sum string  total of [3]
--   [5] day counter       string  tokens counted today (UTC); expires after the day
--   [6] month counter     string  tokens counted this month (UTC); expires after the month
--   [7] concurrency       zset    request_id -> lease expiry (ms)
-- ARGV:
--   [1] now (ms)            [2] request_id          [3] tokens to reserve
--   [4] requests/minute     [5] tokens/minute       [6] tokens/day
--   [7] tokens/month        [8] concurrent requests (each limit: -1 for none)
--   [9] lease (ms)          [10] seconds to the end of the day (UTC)
--   [11] seconds to the end of the month (UTC)
-- Returns {admitted (1|0), reason ('' or which limit refused), retry after (ms),
--          requests used, requests reset (ms), tokens used, tokens reset (ms)}.
local now = tonumber(ARGV[1])
local window_start = now - 60000
local reserve = tonumber(ARGV[3])
local limits = {
  rpm = tonumber(ARGV[4]), tpm = tonumber(ARGV[5]), tpd = tonumber(ARGV[6]),
  tpmo = tonumber(ARGV[7]), concurrent = tonumber(ARGV[8]),
}

-- Forget what slid out of the windows and leases that lapsed (their gateway died).
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', window_start)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', window_start)
if #expired > 0 then
  local amounts = redis.call('HMGET', KEYS[3], unpack(expired))
  local total = 0
  for _, amount in ipairs(amounts) do total = total + (tonumber(amount) or 0) end
  redis.call('DECRBY', KEYS[4], total)
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', window_start)
end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)

local requests = redis.call('ZCARD', KEYS[1])
local tokens = tonumber(redis.call('GET', KEYS[4]) or '0')
local today = tonumber(redis.call('GET', KEYS[5]) or '0')
local month = tonumber(redis.call('GET', KEYS[6]) or '0')
local running = redis.call('ZCARD', KEYS[7])

-- When the oldest entry leaves the window (ms from now).
local function requests_reset()
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + 60000 - now
end

-- When enough tokens leave the window for the amount used to fall under `limit` (ms).
local function tokens_reset(limit)
  if tokens < limit or tokens == 0 then return 0 end
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  local left = tokens
  for i = 1, #entries, 2 do
    left = left - (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
    if left < limit then return tonumber(entries[i + 1]) + 60000 - now end
  end
  return 60000
end

local function refuse(reason, retry_after)
  return {0, reason, math.max(retry_after, 1), requests, requests_reset(), tokens,
          tokens_reset(math.max(limits.tpm, 1))}
end

if limits.concurrent >= 0 and running >= limits.concurrent then
  return refuse('concurrent', 1000)
end
if limits.rpm >= 0 and requests >= limits.rpm then
  return refuse('requests', requests_reset())
end
if limits.tpm >= 0 and tokens >= limits.tpm then
  return refuse('tokens', tokens_reset(limits.tpm))
end
if limits.tpd >= 0 and today >= limits.tpd then
  return refuse('tokens_per_day', tonumber(ARGV[10]) * 1000)
end
if limits.tpmo >= 0 and month >= limits.tpmo then
  return refuse('tokens_per_month', tonumber(ARGV[11]) * 1000)
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
requests = requests + 1
tokens = tokens + reserve
-- The window keys expire a minute after their newest entry.
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], 61000) end
redis.call('PEXPIRE', KEYS[7], tonumber(ARGV[9]) + 1000)
return {1, '', 0, requests, requests_reset(), tokens, tokens_reset(math.max(limits.tpm, 1))}
