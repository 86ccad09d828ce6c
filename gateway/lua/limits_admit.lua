-- Check every limit of one account and of the key's project and, if all pass, count the
-- request against all of them (all or nothing: a refusal at either level counts nothing at
-- either). Windows slide over the last 60 s exactly (a log of entries, no fixed buckets, so
-- no 2x burst at window edges). Token limits and the budgets' hard caps admit while the amount
-- used is under the limit, so a quota or a budget is exceeded by at most the reservation of the
-- request that crossed it. Money is in integer pico-units (10^-12) of billing's currency,
-- exact: INCRBY adds 64-bit integers, and amounts are only ever handled here as decimal strings
-- (Lua numbers are doubles, exact only to 2^53). A spend counter saturates: at or past the
-- ceiling it takes no more reservations.
-- The project's keys carry the account's hash tag, so the script stays on one Cluster slot.
-- Its day and month counters and its spend always count; its windows and slots only while it
-- has a limit on them (the account's always count: /v1/usage shows them).
-- A prepaid account (two credit keys after the levels' keys) is admitted only while its credit
-- balance covers the request's most possible cost ([12]), or, unpriced ([12] = 0), while it is
-- above zero; the reservation is taken off the balance and held under the request's id until
-- it settles. A missing balance is none (refused, balance ''): the caller tells a Redis that
-- lost its counters apart (metering/credits.py's epoch). Checked after every other limit, all
-- or nothing with them.
-- KEYS (one account, one hash tag); [9..16] may be left out (no project level), and the two
-- credit keys come last, after the levels' eight or sixteen:
--   [1] requests window   zset    request_id -> admission time (ms)
--   [2] tokens window     zset    request_id -> admission time (ms)
--   [3] tokens amounts    hash    request_id -> tokens counted in the window for it
--   [4] tokens window sum string  total of [3]
--   [5] day counter       string  tokens counted today (UTC); expires after the day
--   [6] month counter     string  tokens counted this month (UTC); expires after the month
--   [7] concurrency       zset    request_id -> lease expiry (ms)
--   [8] month spend       string  pico-units spent this month (UTC); expires after the month
--   [9..16] the same eight for the key's project
--   then, prepaid accounts only:
--   [L+1] credit balance  string  pico-units available (metering/credits.py; no expiry)
--   [L+2] credit held     hash    request_id -> pico-units reserved from the balance for it
-- ARGV:
--   [1] now (ms)            [2] request_id          [3] tokens to reserve
--   [4] requests/minute     [5] tokens/minute       [6] tokens/day
--   [7] tokens/month        [8] concurrent requests (each limit: -1 for none)
--   [9] lease (ms)          [10] seconds to the end of the day (UTC)
--   [11] seconds to the end of the month (UTC)
--   [12] money to reserve (pico-units, decimal; 0: unpriced)
--   [13] the month's hard cap (pico-units, decimal, at most [14]; -1 for none)
--   [14] the spend counter's ceiling (pico-units, decimal)
--   [15..19] the project's requests/minute, tokens/minute, tokens/day, tokens/month and
--            concurrent requests   [20] the project's hard cap (each -1 for none)
-- Returns {admitted (1|0), reason ('' or which limit refused), retry after (ms),
--          requests in the window, ms until that window is empty, tokens in the window,
--          ms until that window is empty, money reserved (decimal string: [12], or '0' when
--          the counter is saturated or the request refused), the level that refused
--          ('', 'account' or 'project'), then the project's requests, requests reset, tokens,
--          tokens reset and money reserved, as the account's (0 where not counted), the
--          credit reserved (decimal string, '0' unless prepaid and admitted), and the credit
--          balance after admission or at the refusal (decimal string; '' where not prepaid or
--          the balance key is missing)}.
local now = tonumber(ARGV[1])
local reserve = tonumber(ARGV[3])
local money, ceiling = ARGV[12], ARGV[14]
local day_left, month_left = tonumber(ARGV[10]), tonumber(ARGV[11])

local function limits_at(first, cap)
  return {rpm = tonumber(ARGV[first]), tpm = tonumber(ARGV[first + 1]),
          tpd = tonumber(ARGV[first + 2]), tpmo = tonumber(ARGV[first + 3]),
          concurrent = tonumber(ARGV[first + 4]), cap = cap}
end

-- A level's use of its limits now, after sliding its windows.
local function standing(k)
  slide(k, now)
  return {requests = redis.call('ZCARD', KEYS[k + 1]),
          tokens = tonumber(redis.call('GET', KEYS[k + 4]) or '0'),
          today = tonumber(redis.call('GET', KEYS[k + 5]) or '0'),
          month = tonumber(redis.call('GET', KEYS[k + 6]) or '0'),
          running = redis.call('ZCARD', KEYS[k + 7]),
          spent = redis.call('GET', KEYS[k + 8]) or '0'}
end

-- When a window is empty again, its limit back to its initial state (ms from now).
local function window_reset(key)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return tonumber(newest[2]) + 60000 - now
end

-- When the oldest request leaves the window, making room for one more (ms from now).
local function requests_retry(k)
  local oldest = redis.call('ZRANGE', KEYS[k + 1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + 60000 - now
end

-- When enough tokens leave the window for the amount used to fall under the limit (ms).
local function tokens_retry(k, used, limit)
  local left, start = used, 0
  while true do
    local entries = redis.call('ZRANGE', KEYS[k + 2], start, start + 499, 'WITHSCORES')
    if #entries == 0 then return 60000 end
    for i = 1, #entries, 2 do
      left = left - (tonumber(redis.call('HGET', KEYS[k + 3], entries[i])) or 0)
      if left < limit then return tonumber(entries[i + 1]) + 60000 - now end
    end
    start = start + 500
  end
end

-- Which of a level's limits refuses, and when to retry (ms); nil when all pass.
local function refusal(k, lim, s)
  if lim.concurrent >= 0 and s.running >= lim.concurrent then return 'concurrent', 1000 end
  if lim.rpm >= 0 and s.requests >= lim.rpm then return 'requests', requests_retry(k) end
  if lim.tpm >= 0 and s.tokens >= lim.tpm then return 'tokens', tokens_retry(k, s.tokens, lim.tpm) end
  if lim.tpd >= 0 and s.today >= lim.tpd then return 'tokens_per_day', day_left * 1000 end
  if lim.tpmo >= 0 and s.month >= lim.tpmo then return 'tokens_per_month', month_left * 1000 end
  if lim.cap ~= '-1' and at_least(s.spent, lim.cap) then return 'budget', month_left * 1000 end
  return nil
end

-- Count the request at a level; `all`: its windows and slot too, whatever its limits. Returns
-- the money reserved there.
local function count(k, lim, s, all)
  if all or lim.rpm >= 0 then
    redis.call('ZADD', KEYS[k + 1], now, ARGV[2])
    redis.call('PEXPIRE', KEYS[k + 1], 61000)
    s.requests = s.requests + 1
  end
  if all or lim.tpm >= 0 then
    redis.call('ZADD', KEYS[k + 2], now, ARGV[2])
    redis.call('HSET', KEYS[k + 3], ARGV[2], reserve)
    redis.call('INCRBY', KEYS[k + 4], reserve)
    -- The window keys expire a minute after their newest entry.
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[k + i], 61000) end
    s.tokens = s.tokens + reserve
  end
  -- Period counters are named by their period; expiry (an hour after it ends) only frees
  -- memory.
  redis.call('INCRBY', KEYS[k + 5], reserve)
  redis.call('EXPIRE', KEYS[k + 5], day_left + 3600)
  redis.call('INCRBY', KEYS[k + 6], reserve)
  redis.call('EXPIRE', KEYS[k + 6], month_left + 3600)
  if all or lim.concurrent >= 0 then
    redis.call('ZADD', KEYS[k + 7], now + tonumber(ARGV[9]), ARGV[2])
    redis.call('PEXPIRE', KEYS[k + 7], tonumber(ARGV[9]) + 1000)
  end
  -- Even at 0: a request reserved at nothing may still cost something when it settles, and a
  -- settle only counts into a period whose key lives.
  local reserved = money
  if at_least(s.spent, ceiling) then reserved = '0' end
  redis.call('INCRBY', KEYS[k + 8], reserved)
  redis.call('EXPIRE', KEYS[k + 8], month_left + 3600)
  return reserved
end

local function windows(k, s)
  return {s.requests, window_reset(KEYS[k + 1]), s.tokens, window_reset(KEYS[k + 2])}
end

-- The prepaid balance covers a reservation (both integers in decimal as Redis writes them):
-- at least the reservation, and above zero.
local function covers(balance, amount)
  return at_least(balance, amount) and balance ~= '0'
end

local levels = #KEYS - #KEYS % 8
local prepaid = #KEYS % 8 == 2
local balance = ''
if prepaid then balance = redis.call('GET', KEYS[levels + 1]) or '' end

local account_limits = limits_at(4, ARGV[13])
local account = standing(0)
local project_limits, project = nil, nil
if levels == 16 then
  project_limits = limits_at(15, ARGV[20])
  project = standing(8)
end

local function reply(admitted, reason, retry_after, level, account_money, project_money,
                     credit_money)
  local out = {admitted, reason, retry_after}
  for _, value in ipairs(windows(0, account)) do out[#out + 1] = value end
  out[#out + 1] = account_money
  out[#out + 1] = level
  local project_windows = {0, 0, 0, 0}
  if project then project_windows = windows(8, project) end
  for _, value in ipairs(project_windows) do out[#out + 1] = value end
  out[#out + 1] = project_money
  out[#out + 1] = credit_money
  out[#out + 1] = balance
  return out
end

local reason, retry_after = refusal(0, account_limits, account)
local level = 'account'
if not reason and project then
  reason, retry_after = refusal(8, project_limits, project)
  level = 'project'
end
if not reason and prepaid and (balance == '' or not covers(balance, money)) then
  -- Topping up is the only way out: no retry time.
  reason, retry_after, level = 'credit', 0, 'account'
end
if reason then
  return reply(0, reason, math.max(retry_after, 1), level, '0', '0', '0')
end

local account_money = count(0, account_limits, account, true)
local project_money = '0'
if project then project_money = count(8, project_limits, project, false) end
if prepaid then
  -- Read back as Redis writes it: DECRBY's reply would reach Lua as a double.
  redis.call('DECRBY', KEYS[levels + 1], money)
  balance = redis.call('GET', KEYS[levels + 1])
  redis.call('HSET', KEYS[levels + 2], ARGV[2], money)
  return reply(1, '', 0, '', account_money, project_money, money)
end
return reply(1, '', 0, '', account_money, project_money, '0')
