-- recount_batch.lua: set a batch's counters from its tasks' records, in one step, so no
-- move made meanwhile is lost. After a failover (yadtq/worker/failover_repair.py) writes
-- the old primary had not passed on are gone, and a batch's counters, written beside its
-- tasks rather than by the same script as each, may no longer add up.
--
-- Python side: yadtq/backend/failover.py, RecountBatchCall. They lay out these KEYS and
-- ARGV: change the two together (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1] batch counters  yadtq:batch:<batch>
-- KEYS[2] batch task list yadtq:batch:<batch>:tasks
-- ARGV[1] the task key prefix  yadtq:task:
-- ARGV[2...] every status name (status.COUNTERS)
--
-- Returns how many counters it changed (0 when they added up), or -1 for a batch gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
local counts = {}
for i = 2, #ARGV do
  counts[ARGV[i]] = 0
end
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local status = redis.call('HGET', ARGV[1] .. id, 'status')
  if status and counts[status] then
    counts[status] = counts[status] + 1
  end
end
local changed = 0
for status, count in pairs(counts) do
  if tonumber(redis.call('HGET', KEYS[1], status) or '0') ~= count then
    redis.call('HSET', KEYS[1], status, count)
    changed = changed + 1
  end
end
return changed
