-- cancel.lua: cancel a task that has not finished: blocked | scheduled | queued |
-- processing -> cancelled. Its children hear of it (lib/edges.lua): they are skipped, or,
-- where they tolerate it, count it as done (those readied are due in the unblocked set).
-- A worker that later receives it skips it; one running it stops it where it can, and its
-- result is refused by finish.lua because the task is no longer processing.
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: limits.lua
-- uses: events.lua
--
-- Python side: yadtq/backend/scripts.py, CancelCall and CancelReply. They lay out
-- these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] task hash          yadtq:task:<id>
-- KEYS[2] leases sorted set  yadtq:leases:<queue>
-- KEYS[3] batch counters     yadtq:batch:<batch>  (the caller's idea of it; the record's
--         own batch is the one counted, should the caller not know it)
-- KEYS[4] attempts history   yadtq:task:<id>:attempts
-- KEYS[5] retries sorted set yadtq:retries:<queue>
-- KEYS[6] scheduled set      yadtq:scheduled:<queue>
-- KEYS[7] blocked set, KEYS[8] unblocked set, KEYS[9] settling set (lib/edges.lua)
-- ARGV[1] task id
-- ARGV[2] now (unix seconds)
-- ARGV[3] seconds the record lives after it finishes
-- ARGV[4] events target (lib/events.lua: the channel, or it and an outbox) (every event message is a JSON array of changes)
-- ARGV[5] who asked, for the history
-- ARGV[6] how many edges the call may move (the rest go to settle.lua)
--
-- A cancelled task gives back its concurrency share and wakes the oldest task waiting for
-- it, or, waiting for a limit itself, leaves its waiting list (lib/limits.lua).
-- Returns {"ok", previous status, worker that held it or ""} or {"skip", current status}.
local current = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker', 'batch',
                           'readers', 'parents', 'share', 'waits_on', 'task')
if current[1] ~= 'queued' and current[1] ~= 'processing' and current[1] ~= 'scheduled'
    and current[1] ~= 'blocked' then
  return {'skip', current[1] or 'missing'}
end
local ttl = math.floor(tonumber(ARGV[3]))
local now = tonumber(ARGV[2])
local ctx = edges_context(edges_prefix(KEYS[1], ARGV[1]), KEYS[7], KEYS[8], KEYS[9], now, ttl,
                          now, tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2],
           'error_type', 'TaskCancelled', 'error', 'cancelled by ' .. ARGV[5])
redis.call('HDEL', KEYS[1], 'retry_at')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[8], ARGV[1])
limits_release(KEYS[1], ARGV[1], current[7])
limits_unwait(ARGV[1], current[8])
redis.call('RPUSH', KEYS[4], cjson.encode({attempt = tonumber(current[2]), worker = current[3] or '',
  event = 'cancelled', detail = 'was ' .. current[1] .. '; cancelled by ' .. ARGV[5],
  at = tonumber(ARGV[2])}))
edges_expire(ctx, KEYS[1], current[5])
local batch = current[4] or ''
if batch ~= '' then
  local batch_key = ctx.P .. 'batch:' .. batch
  redis.call('HINCRBY', batch_key, current[1], -1)
  redis.call('HINCRBY', batch_key, 'cancelled', 1)
end
local changes = {{id = ARGV[1], status = 'cancelled', worker = current[3] or '',
  attempt = tonumber(current[2]), batch = batch, at = now}}
stats_move(ctx.stats, current[9], current[1], 'cancelled')
edges_final(ctx, ARGV[1], 'cancelled', current[5], current[6])
stats_write(stats_key(ARGV[4], 'events'), ctx.stats)
for _, change in ipairs(ctx.changes) do
  changes[#changes + 1] = change
end
events_send(ARGV[4], cjson.encode(changes))
return {'ok', current[1], current[3] or ''}
