-- produce_unsent.lua: a guarded lone task (enqueue.lua) was not claimed from its record
-- while its client waited, so the client is about to produce its message: forget its
-- guard, its `unsent` mark and its entry in the unsent set, which a worker would otherwise
-- produce it from. Answers whether it is still queued: if not, a worker claimed it (or it
-- was cancelled) meanwhile, and it needs no message.
--
-- Python side: yadtq/backend/due_scripts.py, ProduceUnsentCall. They lay out these KEYS
-- and ARGV: change the two together (tests/test_scripts.py runs the codec against this
-- script).
--
-- KEYS[1] unsent set  yadtq:unsent:<queue>
-- KEYS[2] task hash   yadtq:task:<id>
-- ARGV[1] task id
--
-- Returns 1 to produce it, else 0.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], 'unsent')
if redis.call('HGET', KEYS[2], 'status') == 'queued' then
  return 1
end
return 0
