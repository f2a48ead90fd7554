-- publish_outbox.lua: publish the events a script left in an outbox (lib/events.lua), once
-- the caller's WAIT said a replica has the writes they describe, and forget the outbox.
--
-- Python side: yadtq/backend/durability.py, PublishOutboxCall. They lay out these KEYS and
-- ARGV: change the two together (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] outbox list   yadtq:outbox:<queue>:<id>
-- ARGV[1] events channel
--
-- Returns how many event messages it published.
local messages = redis.call('LRANGE', KEYS[1], 0, -1)
for _, message in ipairs(messages) do
  redis.call('PUBLISH', ARGV[1], message)
end
redis.call('DEL', KEYS[1])
return #messages
