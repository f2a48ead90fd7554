-- undelivered.lua: fail tasks whose messages a client could not deliver to Kafka:
-- queued -> failed. Nothing would ever run them, and the client has told its caller.
-- A task a worker claimed meanwhile (its message got through after all) is left alone,
-- and a worker that receives a failed one later skips it: one outcome either way.
--
-- Python side: yadtq/backend/scripts.py, UndeliveredCall with an UndeliveredTask per
-- task. They lay out these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- then for each task 4 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>
--   batch task list    yadtq:batch:<batch>:tasks
--   attempts history   yadtq:task:<id>:attempts
-- ARGV[1] now (unix seconds)
-- ARGV[2] seconds a record lives after it finishes
-- ARGV[3] events channel
-- ARGV[4] error type
-- ARGV[5] error message
-- then for each task 1 arg: task id
--
-- Returns how many tasks it failed. Publishes one event message: a JSON array of changes.
local now_text, channel, error_type, error = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(now_text)
local ttl = math.floor(tonumber(ARGV[2]))
local changes = {}
for i = 1, #KEYS / 4 do
  local task_key, batch_key, list_key, history_key =
    KEYS[4 * i - 3], KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i]
  local id = ARGV[5 + i]
  local current = redis.call('HMGET', task_key, 'status', 'attempt', 'batch')
  if current[1] == 'queued' then
    local attempt = tonumber(current[2])
    redis.call('HSET', task_key, 'status', 'failed', 'finished_at', now_text,
               'error_type', error_type, 'error', error, 'traceback', '')
    redis.call('EXPIRE', task_key, ttl)
    redis.call('RPUSH', history_key, cjson.encode({attempt = attempt, worker = '',
      event = 'failed', detail = 'undelivered: ' .. error_type, at = now}))
    redis.call('EXPIRE', history_key, ttl)
    local batch = current[3] or ''
    if batch ~= '' then
      redis.call('HINCRBY', batch_key, 'queued', -1)
      redis.call('HINCRBY', batch_key, 'failed', 1)
      redis.call('EXPIRE', batch_key, ttl)
      redis.call('EXPIRE', list_key, ttl)
    end
    changes[#changes + 1] = {id = id, status = 'failed', worker = '', attempt = attempt,
      batch = batch, at = now}
  end
end
if #changes > 0 then
  redis.call('PUBLISH', channel, cjson.encode(changes))
end
return #changes
