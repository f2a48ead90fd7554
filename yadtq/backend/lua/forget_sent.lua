-- forget_sent.lua: forget the entries of the scheduled set whose tasks were produced, once
-- Kafka has them. A task produced and claimed meanwhile may already wait again over a
-- rate limit (claim.lua put it back, due anew, with a due_at): its entry stays. One waiting
-- again for a concurrency share waits for a wake-up instead: its held entry goes.
--
-- Python side: yadtq/backend/due_scripts.py, ForgetSentCall. They lay out these KEYS and
-- ARGV: change the two together (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] scheduled set  yadtq:scheduled:<queue>
-- ARGV[1] the task key prefix  yadtq:task:
-- ARGV[2...] the ids produced
--
-- Returns how many entries it removed.
local removed = 0
for i = 2, #ARGV do
  local current = redis.call('HMGET', ARGV[1] .. ARGV[i], 'status', 'due_at')
  if current[1] ~= 'scheduled' or not current[2] then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
