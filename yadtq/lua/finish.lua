-- finish.lua: store a task's outcome: processing -> success | failed.
-- Fenced: refused unless the task is processing under this attempt and worker.
--
-- KEYS[1] task hash          yadtq:task:<id>
-- KEYS[2] leases sorted set  yadtq:leases:<queue>
-- KEYS[3] batch counters     yadtq:batch:<batch>
-- KEYS[4] batch task list    yadtq:batch:<batch>:tasks
-- ARGV[1] task id
-- ARGV[2] attempt the worker holds
-- ARGV[3] worker id
-- ARGV[4] new status: "success" or "failed"
-- ARGV[5] now (unix seconds)
-- ARGV[6] seconds the record lives after it finishes
-- ARGV[7] events channel
-- ARGV[8..] field, value pairs to store (result, or error_type/error/traceback)
--
-- Returns {"ok"} or {"refused", current status or "missing", current attempt, current worker}.
local new_status = ARGV[4]
if new_status ~= 'success' and new_status ~= 'failed' then
  return redis.error_reply('finish.lua: status must be success or failed, got ' .. new_status)
end
local current = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker', 'batch')
if current[1] ~= 'processing' or current[2] ~= ARGV[2] or current[3] ~= ARGV[3] then
  return {'refused', current[1] or 'missing', current[2] or '', current[3] or ''}
end
redis.call('HSET', KEYS[1], 'status', new_status, 'finished_at', ARGV[5])
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
local ttl = math.floor(tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[1], ttl)
local batch = current[4] or ''
if batch ~= '' then
  redis.call('HINCRBY', KEYS[3], 'processing', -1)
  redis.call('HINCRBY', KEYS[3], new_status, 1)
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('EXPIRE', KEYS[4], ttl)
end
redis.call('PUBLISH', ARGV[7], cjson.encode({id = ARGV[1], status = new_status,
  worker = ARGV[3], attempt = tonumber(ARGV[2]), batch = batch, at = tonumber(ARGV[5])}))
return {'ok'}
