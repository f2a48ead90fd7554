-- retry_workflow.lua: run a workflow's failed and skipped tasks again, same ids, attempt + 1:
-- failed | skipped -> queued when every parent succeeded (or may fail), else -> blocked on
-- the parents that run again. Succeeded tasks keep their results. A task that still waits on
-- a parent that will not run again (cancelled, or its record gone) stays as it is, and so
-- do the tasks below it.
--
-- Python side: yadtq/backend/scripts.py, RetryWorkflowCall. They lay out these KEYS and
-- ARGV and name the reply's fields: change the two together (tests/test_scripts.py runs the
-- codec against this script).
--
-- KEYS[1] blocked set     yadtq:blocked:<queue>
-- KEYS[2] unblocked set   yadtq:unblocked:<queue>  (queued ones enter it due now)
-- ARGV[1] the key prefix with its colon ("yadtq:")
-- ARGV[2] now (unix seconds)
-- ARGV[3] events target (lib/events.lua: the channel, or it and an outbox)
-- then the ids of the workflow's tasks to look at
--
-- uses: stats.lua
-- uses: events.lua
--
-- Returns {ids queued, ids blocked}.
-- (Its outcomes stay counted in the queue's counters: they count outcomes reached.)
local prefix, now = ARGV[1], tonumber(ARGV[2])
local again, records = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local record = redis.call('HMGET', prefix .. 'task:' .. id, 'status', 'parents', 'tolerates',
                            'batch', 'attempt')
  if record[1] == 'failed' or record[1] == 'skipped' then
    again[id] = true
    records[id] = record
  end
end
-- A parent that will not run again and did not succeed keeps its child from running,
-- unless the child tolerates its failure; that child stays, and so on below it.
local function tolerated(record)
  local set = {}
  for _, parent in ipairs(record[3] and cjson.decode(record[3]) or {}) do
    set[parent] = true
  end
  return set
end
local changed = true
while changed do
  changed = false
  for id, record in pairs(records) do
    if again[id] then
      local may_fail = tolerated(record)
      for _, parent in ipairs(record[2] and cjson.decode(record[2]) or {}) do
        local status = redis.call('HGET', prefix .. 'task:' .. parent, 'status')
        if not again[parent] and status ~= 'success' and not (status and may_fail[parent]) then
          again[id] = nil
          changed = true
          break
        end
      end
    end
  end
end
local queued, blocked, changes, stats = {}, {}, {}, {}
for id, record in pairs(records) do
  if again[id] then
    local key = prefix .. 'task:' .. id
    local may_fail = tolerated(record)
    local waiting = 0
    for _, parent in ipairs(record[2] and cjson.decode(record[2]) or {}) do
      local parent_key = prefix .. 'task:' .. parent
      redis.call('HINCRBY', parent_key, 'readers', 1)
      redis.call('PERSIST', parent_key)
      redis.call('PERSIST', parent_key .. ':attempts')
      if again[parent] then
        waiting = waiting + 1
        redis.call('HSET', parent_key .. ':children', id, may_fail[parent] and '1' or '0')
      end
    end
    local attempt = tonumber(record[5] or '1') + 1
    local status = waiting > 0 and 'blocked' or 'queued'
    stats_move(stats, nil, record[1], status)
    redis.call('HDEL', key, 'result', 'error_type', 'error', 'traceback', 'finished_at',
               'started_at', 'root', 'root_error', 'worker', 'retry_at')
    redis.call('HSET', key, 'attempt', tostring(attempt), 'waiting', waiting)
    if status == 'blocked' then
      redis.call('HSET', key, 'status', 'blocked')
      redis.call('ZADD', KEYS[1], now, id)
      blocked[#blocked + 1] = id
    else
      redis.call('HSET', key, 'status', 'queued', 'ready_at', tostring(now))
      redis.call('ZADD', KEYS[2], now, id)
      queued[#queued + 1] = id
    end
    redis.call('PERSIST', key)
    redis.call('PERSIST', key .. ':attempts')
    redis.call('RPUSH', key .. ':attempts', cjson.encode({event = 'retried', at = now,
      attempt = attempt, worker = '', detail = 'was ' .. record[1] .. '; workflow retry'}))
    local batch = record[4] or ''
    if batch ~= '' then
      redis.call('HINCRBY', prefix .. 'batch:' .. batch, record[1], -1)
      redis.call('HINCRBY', prefix .. 'batch:' .. batch, status, 1)
      redis.call('PERSIST', prefix .. 'batch:' .. batch)
      redis.call('PERSIST', prefix .. 'batch:' .. batch .. ':tasks')
    end
    changes[#changes + 1] = {id = id, status = status, worker = '', batch = batch,
      attempt = attempt, at = now}
  end
end
stats_write(stats_key(ARGV[3], 'events'), stats)
if #changes > 0 then
  events_send(ARGV[3], cjson.encode(changes))
end
return {queued, blocked}
