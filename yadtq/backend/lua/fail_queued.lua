-- fail_queued.lua: fail queued tasks that nothing will ever run: queued -> failed.
-- Either a client could not deliver their messages to Kafka (and has told its caller),
-- or a worker refused their messages (unsigned, forged, invalid, too large) and sent them
-- to the dead-letter topic. A task a worker claimed meanwhile (a good copy got through)
-- is left alone, and a worker that receives a failed one later skips it: one outcome
-- either way. Their children hear of it (lib/edges.lua). A refused message that names a task with no record (a plain message from
-- a client that writes none) gets a failed record, so its id says why it never ran.
--
-- Python side: yadtq/backend/scripts.py, FailQueuedCall with a FailQueuedTask per task.
-- They lay out these KEYS and ARGV: change the two together (tests/test_scripts.py runs
-- the codec against this script).
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: events.lua
--
-- KEYS[1] blocked set, KEYS[2] unblocked set, KEYS[3] settling set (lib/edges.lua)
-- then for each task 4 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>
--   batch task list    yadtq:batch:<batch>:tasks
--   attempts history   yadtq:task:<id>:attempts
-- ARGV[1] now (unix seconds)
-- ARGV[2] seconds a record lives after it finishes
-- ARGV[3] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[4] error type
-- ARGV[5] error message
-- ARGV[6] why nothing will run them, for the history: "undelivered" or "refused"
-- ARGV[7] how many edges the call may move (the rest go to settle.lua)
-- then for each task 2 args: task id, and the task name of a failed record to write
--   when it has none ("" writes none)
--
-- Returns how many tasks it failed. Publishes one event message: a JSON array of changes.
local now_text, channel, error_type, error, why = ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now = tonumber(now_text)
local ttl = math.floor(tonumber(ARGV[2]))
local changes, failed, stats = {}, 0, {}
local ctx
for i = 1, (#KEYS - 3) / 4 do
  local task_key, batch_key, list_key, history_key =
    KEYS[4 * i], KEYS[4 * i + 1], KEYS[4 * i + 2], KEYS[4 * i + 3]
  local id, create_as = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  ctx = ctx or edges_context(edges_prefix(task_key, id), KEYS[1], KEYS[2], KEYS[3], now, ttl,
                             now, tonumber(ARGV[7]))
  local current = redis.call('HMGET', task_key, 'status', 'attempt', 'batch', 'readers',
                             'parents', 'task')
  local missing = current[1] == false and create_as ~= ''
  if current[1] == 'queued' or missing then
    local attempt = tonumber(current[2]) or 1
    if missing then
      redis.call('HSET', task_key, 'task', create_as, 'attempt', attempt, 'queued_at', now_text,
                 'format', 'plain')
    end
    if missing then
      stats_add(stats, 'submitted', 1)
    end
    stats_move(stats, current[6] or create_as, missing and '' or 'queued', 'failed')
    if why == 'refused' then
      stats_add(stats, 'dead_lettered', 1)
    end
    redis.call('HSET', task_key, 'status', 'failed', 'finished_at', now_text,
               'error_type', error_type, 'error', error, 'traceback', '')
    redis.call('RPUSH', history_key, cjson.encode({attempt = attempt, worker = '',
      event = 'failed', detail = why .. ': ' .. error_type, at = now}))
    redis.call('ZREM', KEYS[2], id)
    edges_expire(ctx, task_key, current[4])
    local batch = current[3] or ''
    if batch ~= '' then
      redis.call('HINCRBY', batch_key, 'queued', -1)
      redis.call('HINCRBY', batch_key, 'failed', 1)
      redis.call('EXPIRE', batch_key, ttl)
      redis.call('EXPIRE', list_key, ttl)
    end
    changes[#changes + 1] = {id = id, status = 'failed', worker = '', attempt = attempt,
      batch = batch, at = now}
    failed = failed + 1
    edges_final(ctx, id, 'failed', current[4], current[5])
  end
end
stats_write(stats_key(channel, 'events'), stats, ctx and ctx.stats or {})
for _, change in ipairs(ctx and ctx.changes or {}) do
  changes[#changes + 1] = change
end
if #changes > 0 then
  events_send(channel, cjson.encode(changes))
end
return failed
