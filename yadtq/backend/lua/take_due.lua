-- take_due.lua: take the entries of a due set whose time has come, for one caller to
-- produce: retries whose backoff is over, or scheduled tasks now due (a countdown or ETA).
-- Each taken entry is pushed ARGV[2] seconds into the future rather than removed, so a
-- caller that dies before producing leaves it to be taken again; the caller removes it
-- (ZREM) once the message is produced. Safe in every worker at once.
--
-- Python side: yadtq/backend/scripts.py, TakeDueCall. They lay out
-- these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] due sorted set  yadtq:retries:<queue> or yadtq:scheduled:<queue>  (id -> when)
-- ARGV[1] now (unix seconds), or "" for Redis's own clock: one clock for every worker
-- ARGV[2] seconds to hold a taken entry
-- ARGV[3] most entries to take
--
-- Returns the ids taken, then the time it judged them by.
local now = tonumber(ARGV[1])
if now == nil then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local hold = now + tonumber(ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], hold, id)
end
ids[#ids + 1] = tostring(now)
return ids
