-- release.lua: scheduled -> queued for tasks whose due time has come (take_due.lua took
-- them), before they are produced to Kafka. A task already queued (its taker died before
-- producing it) is to be produced all the same; one cancelled meanwhile, or gone, is not.
--
-- Python side: yadtq/backend/scripts.py, ReleaseCall with a ReleaseTask per task. They
-- lay out these KEYS and ARGV: change the two together (tests/test_scripts.py runs the
-- codec against this script).
--
-- then for each task 3 keys:
--   task hash          yadtq:task:<id>
--   batch counters     yadtq:batch:<batch>
--   attempts history   yadtq:task:<id>:attempts
-- ARGV[1] now (unix seconds)
-- ARGV[2] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[3] who released them, for the history
-- then for each task 1 arg: task id
--
-- uses: stats.lua
-- uses: events.lua
--
-- Returns, per task, 1 to produce it or 0 not to. Publishes one event message for the moved.
local now_text, channel, worker = ARGV[1], ARGV[2], ARGV[3]
local now = tonumber(now_text)
local changes, verdicts, stats = {}, {}, {}
for i = 1, #KEYS / 3 do
  local task_key, batch_key, history_key = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local id = ARGV[3 + i]
  local current = redis.call('HMGET', task_key, 'status', 'attempt', 'batch')
  verdicts[i] = 0
  if current[1] == 'scheduled' then
    local attempt = tonumber(current[2])
    redis.call('HSET', task_key, 'status', 'queued', 'queued_at', now_text)
    stats_move(stats, nil, 'scheduled', 'queued')
    redis.call('RPUSH', history_key, cjson.encode({attempt = attempt, worker = worker,
      event = 'due', detail = 'scheduled -> queued', at = now}))
    local batch = current[3] or ''
    if batch ~= '' then
      redis.call('HINCRBY', batch_key, 'scheduled', -1)
      redis.call('HINCRBY', batch_key, 'queued', 1)
    end
    changes[#changes + 1] = {id = id, status = 'queued', worker = '', attempt = attempt,
      batch = batch, at = now}
    verdicts[i] = 1
  elseif current[1] == 'queued' then
    verdicts[i] = 1
  end
end
stats_write(stats_key(channel, 'events'), stats)
if #changes > 0 then
  events_send(channel, cjson.encode(changes))
end
return verdicts
