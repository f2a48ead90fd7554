-- lib/events.lua: send a script's change events. Not a script of its own: script_runner
-- puts it in front of each script whose header says "-- uses: events.lua".
--
-- The target is the queue's events channel (yadtq:events:<queue>), published to at once;
-- or, when the caller confirms its writes with a replica before anyone may see them
-- (YADTQ_DURABILITY=replicated, backend/durability.py), the channel, a newline, and an
-- outbox list: the events wait there until the caller has its WAIT and publishes them
-- (publish_outbox.lua), so no client sees an outcome a failover could take back.

local EVENTS_OUTBOX_TTL = 3600  -- an outbox its caller never published (it died) goes

-- The events channel of a target.
local function events_channel(target)
  return (string.match(target, '^[^\n]*'))
end

local function events_send(target, message)
  local channel, outbox = string.match(target, '^([^\n]*)\n(.+)$')
  if outbox then
    redis.call('RPUSH', outbox, message)
    redis.call('EXPIRE', outbox, EVENTS_OUTBOX_TTL)
  else
    redis.call('PUBLISH', target, message)
  end
end
