-- requeue.lua: give a processing task back to the queue: processing -> queued, attempt + 1.
-- Used by the reaper (lease expired) and by a worker handing back work on shutdown.
--
-- Python side: yadtq/backend/scripts.py, RequeueCall and RequeueReply. They lay out
-- these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- uses: stats.lua
-- uses: limits.lua
-- uses: events.lua
--
-- KEYS[1] task hash          yadtq:task:<id>
-- KEYS[2] leases sorted set  yadtq:leases:<queue>
-- KEYS[3] batch counters     yadtq:batch:<batch>
-- KEYS[4] attempts history   yadtq:task:<id>:attempts
-- ARGV[1] task id
-- ARGV[2] mode: "expired" (only if the lease is past ARGV[3]), "handback" (only if
--         ARGV[4] holds it) or "orphaned" (only if ARGV[6], a worker found dead, holds it)
-- ARGV[3] now (unix seconds)
-- ARGV[4] worker id handing back, or the reaping worker's id
-- ARGV[5] events target (lib/events.lua: the channel, or it and an outbox) (every event message is a JSON array of changes)
-- ARGV[6] with "orphaned": the dead worker's id; else ""
-- ARGV[7...] the names of the task hash fields that hold the message's payload
--
-- Returns {"ok", new attempt, then those fields' values in that order ("" when unset)}
-- so the caller can produce the message again, or {"skip", reason}.
-- A requeued task gives back its concurrency share, if it holds one, and wakes the oldest
-- task waiting for it (lib/limits.lua): a dead worker's share comes back with its lease.
local current = redis.call('HMGET', KEYS[1], 'status', 'attempt', 'worker', 'batch', 'share')
if current[1] ~= 'processing' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'skip', current[1] or 'missing'}
end
local detail
if ARGV[2] == 'expired' then
  local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if expiry and tonumber(expiry) > tonumber(ARGV[3]) then
    return {'skip', 'lease live'}
  end
  detail = 'lease of ' .. (current[3] or '?') .. ' expired; reaped by ' .. ARGV[4]
elseif ARGV[2] == 'orphaned' then
  if current[3] ~= ARGV[6] then
    return {'skip', 'held by ' .. (current[3] or 'nobody')}
  end
  detail = ARGV[6] .. ' lost its Redis connections (it died); reaped by ' .. ARGV[4]
elseif current[3] ~= ARGV[4] then
  return {'skip', 'held by ' .. (current[3] or 'nobody')}
else
  detail = 'handed back by ' .. ARGV[4] .. ' on shutdown'
end
local attempt = (tonumber(current[2]) or 1) + 1
redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', tostring(attempt), 'worker', '',
           'requeued_at', ARGV[3], 'requeue_reason', detail)
redis.call('ZREM', KEYS[2], ARGV[1])
limits_release(KEYS[1], ARGV[1], current[5])
redis.call('RPUSH', KEYS[4], cjson.encode({attempt = tonumber(current[2]), worker = current[3],
  event = ({expired = 'lease expired', orphaned = 'worker died',
            handback = 'handed back'})[ARGV[2]], detail = detail,
  at = tonumber(ARGV[3])}))
local batch = current[4] or ''
if batch ~= '' then
  redis.call('HINCRBY', KEYS[3], 'processing', -1)
  redis.call('HINCRBY', KEYS[3], 'queued', 1)
end
local stats = {requeued = 1}
stats_move(stats, nil, 'processing', 'queued')
stats_write(stats_key(ARGV[5], 'events'), stats)
events_send(ARGV[5], cjson.encode({{id = ARGV[1], status = 'queued', worker = '',
  attempt = attempt, batch = batch, at = tonumber(ARGV[3])}}))
local payload = redis.call('HMGET', KEYS[1], unpack(ARGV, 7))
local reply = {'ok', attempt}
for i = 1, #payload do
  reply[#reply + 1] = payload[i] or ''
end
return reply
