-- due_retries.lua: take the retries whose backoff is over, for one caller to produce again.
-- Each taken entry is pushed ARGV[2] seconds into the future rather than removed, so a
-- caller that dies before producing leaves it to be taken again; the caller removes it
-- (ZREM) once the message is produced. Safe in every worker at once.
--
-- Python side: yadtq/backend/scripts.py, DueRetriesCall. They lay out
-- these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] retries sorted set yadtq:retries:<queue>   (task id -> when to run again)
-- ARGV[1] now (unix seconds)
-- ARGV[2] seconds to hold a taken entry
-- ARGV[3] most entries to take
--
-- Returns the task ids taken.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local hold = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], hold, id)
end
return ids
