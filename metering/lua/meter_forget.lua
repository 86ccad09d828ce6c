-- Removes one consumer from the meter's group, in one step with the check that it may go: a
-- consumer's pending events are dropped with it, so one that holds any (or that read again
-- since it was looked at) stays.
-- KEYS[1] the usage stream
-- ARGV[1] the group
-- ARGV[2] the consumer
-- ARGV[3] the least idle time (ms) it must have
-- Returns 1 if the consumer is gone (removed now, or not there, or no such stream or group),
-- 0 if it stays.
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if consumers.err then
  return 1
end
for _, fields in ipairs(consumers) do
  local consumer = {}
  for i = 1, #fields, 2 do consumer[fields[i]] = fields[i + 1] end
  if consumer.name == ARGV[2] then
    if consumer.pending == 0 and consumer.idle >= tonumber(ARGV[3]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
      return 1
    end
    return 0
  end
end
return 1
