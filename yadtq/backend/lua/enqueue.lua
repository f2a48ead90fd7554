-- enqueue.lua: write the queued records of a submit, or of a chunk of a map, before their
-- messages are produced (the record comes first: DESIGN.md, "Delivery guarantees").
-- The fields the call's tasks share come once; each task brings only its own. A lone
-- task's doorbell is rung here, after its record exists: a worker it wakes claims it
-- from that record.
--
-- Python side: yadtq/backend/scripts.py, EnqueueCall. It lays out these KEYS and ARGV:
-- change the two together (tests/test_scripts.py runs the codec against this script).
--
-- A task to run later (a countdown or an ETA) is written `scheduled` with its due time,
-- judged on Redis's clock, and put in the scheduled set; nothing is produced for it until
-- then (take_due.lua, release.lua).
--
-- KEYS[1] batch task list  yadtq:batch:<batch>:tasks  (touched only with ARGV[1])
-- KEYS[2] doorbell         yadtq:doorbell:<queue>:<partition>  (touched only with ARGV[2])
-- KEYS[3] scheduled set    yadtq:scheduled:<queue>  (touched only with ARGV[4])
-- then for each task 1 key: task hash yadtq:task:<id>
-- ARGV[1] "1" to append the tasks' ids to the batch's task list, or ""
-- ARGV[2] the id to ring the doorbell with, or "" to ring none
-- ARGV[3] how many rings a doorbell keeps
-- ARGV[4] when the tasks are due: "in:<seconds>" from now, "at:<unix seconds>", or ""
--         for now (queued)
-- ARGV[5] how many fields every record of the call has, n; then their n names and values,
--         in pairs, from ARGV[6]
-- then m, how many fields each task has of its own, and their m names
-- then for each task: its id and its m values ("" leaves that field unset)
-- Returns how many records it wrote, and when they are due ("" when now).
local due = ''
if ARGV[4] ~= '' then
  local kind, value = string.match(ARGV[4], '^(%a+):(.+)$')
  due = tonumber(value)
  if kind == 'in' then
    local time = redis.call('TIME')
    due = tonumber(time[1]) + tonumber(time[2]) / 1000000 + due
  end
end
local shared_count = tonumber(ARGV[5])
local shared = {}
for i = 6, 5 + 2 * shared_count do
  shared[#shared + 1] = ARGV[i]
end
local own_at = 6 + 2 * shared_count
local own_count = tonumber(ARGV[own_at])
local stride = 1 + own_count
local first = own_at + own_count + 1
local tasks = (#ARGV - first + 1) / stride

local ids = {}
for i = 1, tasks do
  local at = first + (i - 1) * stride
  local fields = {unpack(shared)}
  for j = 1, own_count do
    local value = ARGV[at + j]
    if value ~= '' then
      fields[#fields + 1] = ARGV[own_at + j]
      fields[#fields + 1] = value
    end
  end
  redis.call('HSET', KEYS[3 + i], unpack(fields))
  if due ~= '' then
    redis.call('HSET', KEYS[3 + i], 'status', 'scheduled', 'due_at', string.format('%.6f', due))
    redis.call('ZADD', KEYS[3], due, ARGV[at])
  end
  ids[i] = ARGV[at]
end
if ARGV[1] ~= '' and tasks > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ids))
end
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return {tasks, due == '' and '' or string.format('%.6f', due)}
