-- finish.lua: store a task's outcome: processing -> success | failed, or back to queued
-- to retry after a backoff. Fenced: refused unless the task is processing under this
-- attempt and worker; a refusal is written to the attempts history.
--
-- KEYS[1] task hash          yadtq:task:<id>
-- KEYS[2] leases sorted set  yadtq:leases:<queue>
-- KEYS[3] batch counters     yadtq:batch:<batch>
-- KEYS[4] batch task list    yadtq:batch:<batch>:tasks
-- KEYS[5] attempts history   yadtq:task:<id>:attempts
-- KEYS[6] retries sorted set yadtq:retries:<queue>   (task id -> when to run again)
-- ARGV[1] task id
-- ARGV[2] attempt the worker holds
-- ARGV[3] worker id
-- ARGV[4] outcome: "success", "failed" or "retry"
-- ARGV[5] now (unix seconds)
-- ARGV[6] seconds the record lives after it finishes
-- ARGV[7] events channel
-- ARGV[8] for "retry": when to run again (unix seconds); else ""
-- ARGV[9] one-line summary for the history (the error, or "")
-- ARGV[10..] field, value pairs to store (result, or error_type/error/traceback)
--
-- The success event carries the result when it is short (under 4 KB of JSON), so clients
-- resolve their futures without reading the record back.
-- Returns {"ok"} or {"refused", current status or "missing", current attempt, current worker}.
local outcome = ARGV[4]
if outcome ~= 'success' and outcome ~= 'failed' and outcome ~= 'retry' then
  return redis.error_reply('finish.lua: outcome must be success, failed or retry, got ' .. outcome)
end
local now = tonumber(ARGV[5])
local ttl = math.floor(tonumber(ARGV[6]))
local current = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker', 'batch')
if current[1] ~= 'processing' or current[2] ~= ARGV[2] or current[3] ~= ARGV[3] then
  if current[1] then
    redis.call('RPUSH', KEYS[5], cjson.encode({attempt = tonumber(ARGV[2]), worker = ARGV[3],
      event = 'refused', outcome = outcome, at = now,
      detail = 'task was ' .. current[1] .. ' (attempt ' .. (current[2] or '?') .. ')'}))
  end
  return {'refused', current[1] or 'missing', current[2] or '', current[3] or ''}
end
for i = 10, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
local batch = current[4] or ''
local event = {attempt = tonumber(ARGV[2]), worker = ARGV[3], event = outcome, at = now}
if ARGV[9] ~= '' then
  event.detail = ARGV[9]
end
local new_status = outcome
local attempt = tonumber(ARGV[2])
local worker = ARGV[3]
if outcome == 'retry' then
  new_status = 'queued'
  attempt = attempt + 1
  worker = ''
  event.retry_at = tonumber(ARGV[8])
  redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', tostring(attempt), 'worker', '',
             'retry_at', ARGV[8])
  redis.call('ZADD', KEYS[6], ARGV[8], ARGV[1])
  if batch ~= '' then
    redis.call('HINCRBY', KEYS[3], 'processing', -1)
    redis.call('HINCRBY', KEYS[3], 'queued', 1)
  end
else
  redis.call('HSET', KEYS[1], 'status', outcome, 'finished_at', ARGV[5])
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[5], ttl)
  if batch ~= '' then
    redis.call('HINCRBY', KEYS[3], 'processing', -1)
    redis.call('HINCRBY', KEYS[3], outcome, 1)
    redis.call('EXPIRE', KEYS[3], ttl)
    redis.call('EXPIRE', KEYS[4], ttl)
  end
end
redis.call('RPUSH', KEYS[5], cjson.encode(event))
local change = {id = ARGV[1], status = new_status, worker = worker, attempt = attempt,
  batch = batch, at = now}
if outcome == 'success' and ARGV[10] == 'result' and #ARGV[11] < 4096 then
  change.result = ARGV[11]
end
redis.call('PUBLISH', ARGV[7], cjson.encode(change))
return {'ok'}
