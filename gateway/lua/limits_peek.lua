-- Read where an account (and, with sixteen keys, its project) stands against its limits,
-- changing nothing.
-- KEYS: the eight or sixteen keys of limits_admit.lua, then its two credit keys for a
--       prepaid account.
-- ARGV: [1] now (ms)
-- Returns, for each level in KEYS' order, {requests in the last 60 s, tokens in the last
--          60 s, tokens today, tokens this month, requests running, pico-units spent this
--          month (a decimal string: it may be past 2^53, where a Lua number is no longer
--          exact)}, one after the other; then, with the credit keys, the credit balance
--          (decimal string, '' where missing) and the pico-units held for each request in
--          flight (decimal strings, for the caller to add up exactly).
local now = tonumber(ARGV[1])
local window_start = '(' .. (now - 60000)
local out = {}
local levels = #KEYS - #KEYS % 8
for k = 0, levels - 8, 8 do
  local requests = redis.call('ZCOUNT', KEYS[k + 1], window_start, '+inf')
  local tokens = 0
  local offset = 0
  while true do
    -- In chunks: Lua's unpack() fails beyond a few thousand values.
    local live = redis.call('ZRANGEBYSCORE', KEYS[k + 2], window_start, '+inf',
                            'LIMIT', offset, 1000)
    if #live == 0 then break end
    for _, amount in ipairs(redis.call('HMGET', KEYS[k + 3], unpack(live))) do
      tokens = tokens + (tonumber(amount) or 0)
    end
    offset = offset + #live
  end
  local today = tonumber(redis.call('GET', KEYS[k + 5]) or '0')
  local month = tonumber(redis.call('GET', KEYS[k + 6]) or '0')
  local running = redis.call('ZCOUNT', KEYS[k + 7], '(' .. now, '+inf')
  local spent = redis.call('GET', KEYS[k + 8]) or '0'
  for _, value in ipairs({requests, tokens, today, month, running, spent}) do
    out[#out + 1] = value
  end
end
if #KEYS % 8 == 2 then
  out[#out + 1] = redis.call('GET', KEYS[levels + 1]) or ''
  for _, held in ipairs(redis.call('HVALS', KEYS[levels + 2])) do out[#out + 1] = held end
end
return out
