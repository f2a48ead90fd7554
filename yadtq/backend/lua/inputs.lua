-- inputs.lua: the outcomes a claimed task's arguments stand for: its parent tasks', and
-- each parent batch's in submission order, read in one step (one round trip, however many
-- batches). Reads only.
--
-- Python side: yadtq/backend/scripts.py, InputsCall. They lay out these ARGV and name the
-- reply's fields: change the two together (tests/test_scripts.py runs the codec against
-- this script).
--
-- ARGV[1] the key prefix with its colon ("yadtq:")
-- ARGV[2] n, how many task ids follow; then the n task ids, then the batch ids
--
-- Returns {tasks, batches}: for each task id its status, result, error type, error and
-- traceback (false where unset); for each batch a flat list of its tasks' id and the same
-- five fields.
local FIELDS = {'status', 'result', 'error_type', 'error', 'traceback'}
local prefix, count = ARGV[1], tonumber(ARGV[2])
local tasks, batches = {}, {}
for i = 3, 2 + count do
  for _, value in ipairs(redis.call('HMGET', prefix .. 'task:' .. ARGV[i], unpack(FIELDS))) do
    tasks[#tasks + 1] = value
  end
end
for i = 3 + count, #ARGV do
  local members = {}
  for _, id in ipairs(redis.call('LRANGE', prefix .. 'batch:' .. ARGV[i] .. ':tasks', 0, -1)) do
    members[#members + 1] = id
    for _, value in ipairs(redis.call('HMGET', prefix .. 'task:' .. id, unpack(FIELDS))) do
      members[#members + 1] = value
    end
  end
  batches[#batches + 1] = members
end
return {tasks, batches}
