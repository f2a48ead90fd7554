-- finish.lua: store tasks' outcomes: processing -> success | failed, or back to queued
-- to retry after a backoff. Any number of tasks in one call, so a worker stores what
-- ended meanwhile in one round trip. Fenced: an outcome is refused unless its task is
-- processing under this attempt and worker; a refusal is written to the attempts history.
--
-- Python side: yadtq/backend/scripts.py, FinishCall with a FinishTask per task, and FinishReply.
-- They lay out these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: limits.lua
-- uses: events.lua
--
-- KEYS[1] leases sorted set  yadtq:leases:<queue>
-- KEYS[2] retries sorted set yadtq:retries:<queue>   (task id -> when to run again)
-- KEYS[3] blocked set, KEYS[4] unblocked set, KEYS[5] settling set (lib/edges.lua)
-- then for each task 4 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>
--   batch task list    yadtq:batch:<batch>:tasks
--   attempts history   yadtq:task:<id>:attempts
-- ARGV[1] worker id
-- ARGV[2] now (unix seconds)
-- ARGV[3] seconds a record lives after it finishes
-- ARGV[4] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[5] seconds this worker holds the children a final outcome readies (it produces
--         them itself; another worker does after that)
-- ARGV[6] how many edges the call may move (lib/edges.lua; the rest go to settle.lua)
-- then for each task 9 args:
--   task id
--   attempt the worker holds
--   outcome: "success", "failed" or "retry"
--   for "retry": when to run again (unix seconds); else ""
--   one-line summary for the history (the error, or "")
--   the result as JSON (success), or the error type (failed, retry)
--   the error message ("" for success)
--   the traceback ("" for success)
--   when the attempt ended (unix seconds): the finished_at of a final outcome, which may
--   be stored later than it ended
--
-- A success event carries the result when it is short (under 4 KB of JSON), so clients
-- resolve their futures without reading the record back.
-- A final outcome tells the task's children (lib/edges.lua): in this step, in the branch
-- that accepted it, so a duplicated or replayed outcome cannot count twice.
-- An accepted outcome gives back the task's concurrency share, if it holds one, and wakes
-- the oldest task waiting for it (lib/limits.lua).
-- Returns {replies, readied}: for each task {"ok"} or {"refused", status or "missing",
-- attempt, worker}; and the ids of the children it queued, held for this worker to produce.
-- Publishes one event message: a JSON array of the accepted outcomes' changes.
local worker, now_text, channel = ARGV[1], ARGV[2], ARGV[4]
local now = tonumber(now_text)
local ttl = math.floor(tonumber(ARGV[3]))
local replies, changes = {}, {}
if #KEYS == 5 then
  return {{}, {}}  -- no tasks: the caller (a worker starting) writes only its counts
end
local ctx = edges_context(edges_prefix(KEYS[6], ARGV[7]), KEYS[3], KEYS[4], KEYS[5], now, ttl,
                          now + tonumber(ARGV[5]), tonumber(ARGV[6]))
-- Batch counter moves, tallied per batch and applied once at the end: {key, list key,
-- {field = by}, expire}
local tallies, batches = {}, {}
local function tally(batch_key, list_key, field, by, expire)
  local t = tallies[batch_key]
  if not t then
    t = {list_key, {}, false}
    tallies[batch_key] = t
    batches[#batches + 1] = batch_key
  end
  t[2][field] = (t[2][field] or 0) + by
  t[3] = t[3] or expire
end
for i = 1, (#KEYS - 5) / 4 do  -- refuse a malformed call before changing anything
  local outcome = ARGV[9 * i]
  if outcome ~= 'success' and outcome ~= 'failed' and outcome ~= 'retry' then
    return redis.error_reply('finish.lua: outcome must be success, failed or retry, got '
      .. outcome)
  end
end
for i = 1, (#KEYS - 5) / 4 do
  local task_key, batch_key, list_key, history_key =
    KEYS[4 * i + 2], KEYS[4 * i + 3], KEYS[4 * i + 4], KEYS[4 * i + 5]
  local a = 9 * i - 3
  local id, held, outcome, retry_at, summary = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5]
  local ended = ARGV[a + 9]
  local current = redis.call('HMGET', task_key, 'status', 'attempt', 'worker', 'batch',
                             'readers', 'parents', 'share', 'task')
  if current[1] ~= 'processing' or current[2] ~= held or current[3] ~= worker then
    if current[1] then
      redis.call('RPUSH', history_key, cjson.encode({attempt = tonumber(held),
        worker = worker, event = 'refused', outcome = outcome, at = now,
        detail = 'task was ' .. current[1] .. ' (attempt ' .. (current[2] or '?') .. ')'}))
    end
    replies[i] = {'refused', current[1] or 'missing', current[2] or '', current[3] or ''}
  else
    redis.call('ZREM', KEYS[1], id)
    limits_release(task_key, id, current[7])
    local batch = current[4] or ''
    local event = {attempt = tonumber(held), worker = worker, event = outcome, at = now}
    if summary ~= '' then
      event.detail = summary
    end
    local new_status, attempt, holder = outcome, tonumber(held), worker
    if outcome == 'retry' then
      new_status = 'queued'
      attempt = attempt + 1
      holder = ''
      event.retry_at = tonumber(retry_at)
      redis.call('HSET', task_key, 'error_type', ARGV[a + 6], 'error', ARGV[a + 7],
                 'traceback', ARGV[a + 8], 'status', 'queued', 'attempt', tostring(attempt),
                 'worker', '', 'retry_at', retry_at)
      redis.call('ZADD', KEYS[2], retry_at, id)
      stats_move(ctx.stats, current[8], 'processing', 'queued')
      stats_add(ctx.stats, 'retried', 1)
      if batch ~= '' then
        tally(batch_key, list_key, 'processing', -1, false)
        tally(batch_key, list_key, 'queued', 1, false)
      end
    else
      if outcome == 'success' then
        redis.call('HSET', task_key, 'result', ARGV[a + 6], 'status', outcome,
                   'finished_at', ended)
      else
        redis.call('HSET', task_key, 'error_type', ARGV[a + 6], 'error', ARGV[a + 7],
                   'traceback', ARGV[a + 8], 'status', outcome, 'finished_at', ended)
      end
      stats_move(ctx.stats, current[8], 'processing', outcome)
      if batch ~= '' then
        tally(batch_key, list_key, 'processing', -1, true)
        tally(batch_key, list_key, outcome, 1, true)
      end
    end
    redis.call('RPUSH', history_key, cjson.encode(event))
    if outcome ~= 'retry' then
      edges_expire(ctx, task_key, current[5])
      edges_final(ctx, id, outcome, current[5], current[6])
    end
    local change = {id = id, status = new_status, worker = holder, attempt = attempt,
      batch = batch, at = outcome == 'retry' and now or tonumber(ended)}
    if outcome == 'success' and #ARGV[a + 6] < 4096 then
      change.result = ARGV[a + 6]
    end
    changes[#changes + 1] = change
    replies[i] = {'ok'}
  end
end
for _, batch_key in ipairs(batches) do
  local list_key, moves, expire = unpack(tallies[batch_key])
  for field, by in pairs(moves) do
    redis.call('HINCRBY', batch_key, field, by)
  end
  if expire then
    redis.call('EXPIRE', batch_key, ttl)
    redis.call('EXPIRE', list_key, ttl)
  end
end
stats_write(stats_key(channel, 'events'), ctx.stats)
for _, change in ipairs(ctx.changes) do
  changes[#changes + 1] = change
end
if #changes > 0 then
  events_send(channel, cjson.encode(changes))
end
return {replies, ctx.readied}
