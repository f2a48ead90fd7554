-- claim.lua: a worker takes a queued task: queued -> processing, with a lease.
--
-- KEYS[1] task hash          yadtq:task:<id>
-- KEYS[2] leases sorted set  yadtq:leases:<queue>   (task id -> lease expiry)
-- KEYS[3] batch counters     yadtq:batch:<batch>    (touched only if the task is in that batch)
-- KEYS[4] attempts history   yadtq:task:<id>:attempts (list of JSON events)
-- ARGV[1] task id
-- ARGV[2] worker id
-- ARGV[3] lease expiry (unix seconds)
-- ARGV[4] now (unix seconds)
-- ARGV[5] events channel
-- ARGV[6] batch id the message names, or ""
-- ARGV[7] JSON object of fields to create the record from when none exists
--         (messages from plain-format clients), or "" to skip a missing record
--
-- A record created here was never counted in a batch, so it leaves the counters alone.
-- A task waiting out a retry backoff is not claimed before its retry_at.
-- Returns {"ok", attempt} when claimed, else {"skip", current status or reason}.
local status = redis.call('HGET', KEYS[1], 'status')
local created = false
if not status then
  if ARGV[7] == '' then
    return {'skip', 'missing'}
  end
  local fields = cjson.decode(ARGV[7])
  for name, value in pairs(fields) do
    redis.call('HSET', KEYS[1], name, tostring(value))
  end
  redis.call('HSET', KEYS[1], 'status', 'queued', 'attempt', '1', 'queued_at', ARGV[4])
  status = 'queued'
  created = true
end
if status ~= 'queued' then
  return {'skip', status}
end
local record = redis.call('HMGET', KEYS[1], 'attempt', 'batch', 'retry_at')
if record[3] and tonumber(record[3]) > tonumber(ARGV[4]) then
  return {'skip', 'waiting to retry'}
end
local attempt = tonumber(record[1]) or 1
redis.call('HSET', KEYS[1], 'status', 'processing', 'worker', ARGV[2], 'started_at', ARGV[4],
           'attempt', tostring(attempt))
redis.call('HDEL', KEYS[1], 'retry_at')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[4], cjson.encode({attempt = attempt, worker = ARGV[2],
  event = 'claimed', at = tonumber(ARGV[4])}))
local batch = record[2]
if not created and batch and batch ~= '' and batch == ARGV[6] then
  redis.call('HINCRBY', KEYS[3], 'queued', -1)
  redis.call('HINCRBY', KEYS[3], 'processing', 1)
else
  batch = ''
end
redis.call('PUBLISH', ARGV[5], cjson.encode({id = ARGV[1], status = 'processing',
  worker = ARGV[2], attempt = attempt, batch = batch, at = tonumber(ARGV[4])}))
return {'ok', attempt}
