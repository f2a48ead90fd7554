-- claim.lua: a worker takes queued tasks: queued -> processing, each with a lease.
-- Any number of tasks in one call, so a worker claims what it polled in one round trip.
--
-- Python side: yadtq/backend/scripts.py, ClaimCall with a ClaimTask per task, and
-- ClaimReply. They lay out these KEYS and ARGV and name the reply's fields: change the
-- two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- uses: stats.lua
-- uses: limits.lua
-- uses: events.lua
--
-- KEYS[1] leases sorted set  yadtq:leases:<queue>   (task id -> lease expiry)
-- KEYS[2] scheduled set      yadtq:scheduled:<queue> (where rate-limited tasks wait)
-- KEYS[3] limits set         yadtq:limits:<queue>    (lib/limits.lua)
-- KEYS[4] unsent set         yadtq:unsent:<queue>    (a claimed task leaves it: enqueue.lua)
-- then for each task 3 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>    (touched only if the task is in that batch)
--   attempts history   yadtq:task:<id>:attempts (list of JSON events)
-- ARGV[1] worker id
-- ARGV[2] lease expiry (unix seconds)
-- ARGV[3] now (unix seconds)
-- ARGV[4] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[5] the most tasks to claim: the rest are skipped untouched ("over the limit")
-- ARGV[6] JSON array of the task names this worker serves, with "<shipped code>" if it
--         runs functions shipped by value (a record with a 'code' field); another task is
--         skipped untouched ("not served here"), so it stays queued for a worker that
--         serves it. "" claims any task (the caller has checked the names itself).
-- ARGV[7] the limits' clock: "" for Redis's (TIME), or a test's unix seconds
-- ARGV[8] the queue's limit key base  yadtq:limit:<queue>:  (lib/limits.lua)
-- ARGV[9] JSON array of the task names whose limits need the message's arguments (a
--         claim from the record alone skips them untouched, "limits need the message",
--         for the message to be claimed with its limits), or ""
-- then for each task 4 args:
--   task id
--   batch id the message names, or ""
--   JSON object of fields to create the record from when none exists
--   (messages from plain-format clients), or "" to skip a missing record
--   JSON object of the limits of this call (yadtq/limits.py, Limits.claim_spec), or ""
--
-- A task over a limit is not claimed: queued -> scheduled, its attempt unchanged, with
-- `waits_for` naming the limit; over a rate it is due when the rate lets it start (in the
-- scheduled set), over a concurrency limit when a share is given back (lib/limits.lua).
-- A limited task's started_at is its admission on the limits' clock.
-- A record created here was never counted in a batch, so it leaves the counters alone.
-- A task waiting out a retry backoff is not claimed before its retry_at.
-- Returns, for each task, {"ok", attempt} when claimed, else {"skip", status or reason}
-- ("rate limited" and "concurrency limited" for a task now scheduled).
-- Publishes one event message: a JSON array of the claimed tasks' changes.
local worker, expiry, now, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[5])
local changes, stats = {}, {}  -- stats: the queue's counters' moves (lib/stats.lua)
local moved, batches = {}, {}  -- claimed tasks per batch counters key, applied once at the end
local served, need_message = nil, {}
if ARGV[6] ~= '' then
  served = {}
  for _, name in ipairs(cjson.decode(ARGV[6])) do served[name] = true end
end
if ARGV[9] ~= '' then
  for _, name in ipairs(cjson.decode(ARGV[9])) do need_message[name] = true end
end
local limits = nil  -- made by the first limited task (lib/limits.lua)

local function read(task_key)
  return redis.call('HMGET', task_key, 'status', 'attempt', 'batch', 'retry_at', 'task', 'code',
                    'waits_on', 'limited_at', 'unsent')
end

-- A guarded lone task no longer waits for its client to produce it: it is claimed, or
-- waits over a limit in the scheduled set (enqueue.lua, produce_unsent.lua).
local function unguard(id, task_key, record)
  if record[9] then
    redis.call('ZREM', KEYS[4], id)
    redis.call('HDEL', task_key, 'unsent')
  end
end

-- queued -> scheduled: a task over a limit waits (lib/limits.lua says until when).
local function wait(id, task_key, batch_key, history_key, record, created, named_batch,
                    attempt, refusal)
  local reason, due, L, text = refusal[1], refusal[2], refusal[3], refusal[4]
  unguard(id, task_key, record)
  local now = limits_now(limits)
  local since = tonumber(record[8]) or now
  redis.call('HSET', task_key, 'status', 'scheduled', 'waits_for', text, 'waits_on', L,
             'limited_at', tostring(since))
  if due then
    redis.call('HSET', task_key, 'due_at', tostring(due))
    redis.call('ZADD', KEYS[2], due, id)
  else
    redis.call('HDEL', task_key, 'due_at')
  end
  redis.call('ZADD', L .. ':waiting', since, id)
  stats_move(stats, record[5], 'queued', 'scheduled')
  redis.call('RPUSH', history_key, cjson.encode({attempt = attempt, worker = worker,
    event = 'limited', detail = reason .. ': waits for ' .. text, at = now}))
  local batch = record[3]
  if not created and batch and batch ~= '' and batch == named_batch then
    redis.call('HINCRBY', batch_key, 'queued', -1)
    redis.call('HINCRBY', batch_key, 'scheduled', 1)
  else
    batch = ''
  end
  changes[#changes + 1] = {id = id, status = 'scheduled', worker = '', attempt = attempt,
    batch = batch, at = now, due_at = due or false, waits_for = text}
  return {'skip', reason}
end

local function claim(i)
  local task_key, batch_key, history_key = KEYS[3 * i + 2], KEYS[3 * i + 3], KEYS[3 * i + 4]
  local id, named_batch, fields = ARGV[4 * i + 6], ARGV[4 * i + 7], ARGV[4 * i + 8]
  local spec = ARGV[4 * i + 9]
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
    stats_add(stats, 'submitted', 1)
    stats_move(stats, record[5], '', 'queued')
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
  local started = ARGV[3]
  if spec == '' and not record[6] and need_message[record[5]] then
    return {'skip', 'limits need the message'}
  elseif spec ~= '' then
    limits = limits or limits_context(ARGV[8], KEYS[3], KEYS[2], limits_tasks(task_key, id),
                                      ARGV[7])
    local refusal, share = limits_admit(limits, cjson.decode(spec), id, record[5], attempt,
                                        record[7])
    if refusal then
      return wait(id, task_key, batch_key, history_key, record, created, named_batch, attempt,
                  refusal)
    end
    started = tostring(limits_now(limits))
    if share then
      redis.call('HSET', task_key, 'share', share)
    end
    if record[7] then
      redis.call('ZREM', record[7] .. ':waiting', id)
    end
    if record[8] then  -- it waited: it no longer does
      redis.call('HDEL', task_key, 'waits_on', 'waits_for', 'due_at')
    end
  end
  redis.call('HSET', task_key, 'status', 'processing', 'worker', worker, 'started_at', started,
             'attempt', tostring(attempt))
  stats_move(stats, record[5], 'queued', 'processing')
  unguard(id, task_key, record)
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
    attempt = attempt, batch = batch, at = tonumber(started)}
  return {'ok', attempt}
end

local replies, claimed = {}, 0
for i = 1, (#KEYS - 4) / 3 do
  if claimed >= limit then
    replies[i] = {'skip', 'over the limit'}
  else
    replies[i] = claim(i)
    if replies[i][1] == 'ok' then
      claimed = claimed + 1
    end
  end
end
for _, batch_key in ipairs(batches) do
  redis.call('HINCRBY', batch_key, 'queued', -moved[batch_key])
  redis.call('HINCRBY', batch_key, 'processing', moved[batch_key])
end
stats_write(stats_key(ARGV[4], 'events'), stats)
if #changes > 0 then
  events_send(ARGV[4], cjson.encode(changes))
end
return replies
