-- claim.lua: a worker takes queued tasks: queued -> processing, each with a lease.
-- Any number of tasks in one call, so a worker claims what it polled in one round trip.
--
-- Python side: yadtq/backend/scripts.py, ClaimCall with a ClaimTask per task, and
-- ClaimReply. They lay out these KEYS and ARGV and name the reply's fields: change the
-- two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] leases sorted set  yadtq:leases:<queue>   (task id -> lease expiry)
-- then for each task 3 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>    (touched only if the task is in that batch)
--   attempts history   yadtq:task:<id>:attempts (list of JSON events)
-- ARGV[1] worker id
-- ARGV[2] lease expiry (unix seconds)
-- ARGV[3] now (unix seconds)
-- ARGV[4] events channel
-- ARGV[5] the most tasks to claim: the rest are skipped untouched ("over the limit")
-- ARGV[6] JSON array of the task names this worker serves, with "<shipped code>" if it
--         runs functions shipped by value (a record with a 'code' field); another task is
--         skipped untouched ("not served here"), so it stays queued for a worker that
--         serves it. "" claims any task (the caller has checked the names itself).
-- then for each task 3 args:
--   task id
--   batch id the message names, or ""
--   JSON object of fields to create the record from when none exists
--   (messages from plain-format clients), or "" to skip a missing record
--
-- A record created here was never counted in a batch, so it leaves the counters alone.
-- A task waiting out a retry backoff is not claimed before its retry_at.
-- Returns, for each task, {"ok", attempt} when claimed, else {"skip", status or reason}.
-- Publishes one event message: a JSON array of the claimed tasks' changes.
local worker, expiry, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local changes = {}
local moved, batches = {}, {}  -- claimed tasks per batch counters key, applied once at the end
local served = nil
if ARGV[6] ~= '' then
  served = {}
  for _, name in ipairs(cjson.decode(ARGV[6])) do served[name] = true end
end

local function read(task_key)
  return redis.call('HMGET', task_key, 'status', 'attempt', 'batch', 'retry_at', 'task', 'code')
end

local function claim(i)
  local task_key, batch_key, history_key = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  local id, named_batch, fields = ARGV[3 * i + 4], ARGV[3 * i + 5], ARGV[3 * i + 6]
  local record = read(task_key)
  local status = record[1]
  local created = false
  if not status and fields ~= '' then
    for name, value in pairs(cjson.decode(fields)) do
      redis.call('HSET', task_key, name, tostring(value))
    end
    redis.call('HSET', task_key, 'status', 'queued', 'attempt', '1', 'queued_at', ARGV[3])
    record = read(task_key)
    status = 'queued'
    created = true
  end
  if not status then
    return {'skip', 'missing'}
  end
  if status ~= 'queued' then
    return {'skip', status}
  end
  if served and not served[record[6] and '<shipped code>' or record[5]] then
    return {'skip', 'not served here'}
  end
  if record[4] and tonumber(record[4]) > now then
    return {'skip', 'waiting to retry'}
  end
  local attempt = tonumber(record[2]) or 1
  redis.call('HSET', task_key, 'status', 'processing', 'worker', worker, 'started_at', ARGV[3],
             'attempt', tostring(attempt))
  if record[4] then
    redis.call('HDEL', task_key, 'retry_at')
  end
  redis.call('ZADD', KEYS[1], expiry, id)
  redis.call('RPUSH', history_key, cjson.encode({attempt = attempt, worker = worker,
    event = 'claimed', at = now}))
  local batch = record[3]
  if not created and batch and batch ~= '' and batch == named_batch then
    if not moved[batch_key] then
      moved[batch_key] = 0
      batches[#batches + 1] = batch_key
    end
    moved[batch_key] = moved[batch_key] + 1
  else
    batch = ''
  end
  changes[#changes + 1] = {id = id, status = 'processing', worker = worker,
    attempt = attempt, batch = batch, at = now}
  return {'ok', attempt}
end

local replies = {}
for i = 1, (#KEYS - 1) / 3 do
  if #changes >= limit then
    replies[i] = {'skip', 'over the limit'}
  else
    replies[i] = claim(i)
  end
end
for _, batch_key in ipairs(batches) do
  redis.call('HINCRBY', batch_key, 'queued', -moved[batch_key])
  redis.call('HINCRBY', batch_key, 'processing', moved[batch_key])
end
if #changes > 0 then
  redis.call('PUBLISH', ARGV[4], cjson.encode(changes))
end
return replies
