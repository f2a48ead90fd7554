-- enqueue.lua: write the queued records of a submit, or of a chunk of a map, before their
-- messages are produced (the record comes first: DESIGN.md, "Delivery guarantees").
-- The fields the call's tasks share come once; each task brings only its own. A lone
-- task's doorbell is rung here, after its record exists: a worker it wakes claims it
-- from that record. Its message may then never be produced: a guarded lone task
-- (ARGV[10]) is marked `unsent` and kept in the unsent set, due a grace after now on
-- Redis's clock, until a claim or its client's produce_unsent.lua forgets it; should its
-- client die first, a worker produces it when due (worker/maintenance.py).
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: events.lua
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
-- KEYS[4] blocked set      yadtq:blocked:<queue>  (touched only for tasks with parents)
-- KEYS[5] workflow's tasks yadtq:workflow:<workflow>:tasks  (touched only with ARGV[9])
-- KEYS[6] unsent set       yadtq:unsent:<queue>  (touched only with ARGV[10])
-- then for each task 1 key: task hash yadtq:task:<id>
-- ARGV[1] "1" to append the tasks' ids to the batch's task list, or ""
-- ARGV[2] the id to ring the doorbell with, or "" to ring none
-- ARGV[3] how many rings a doorbell keeps
-- ARGV[4] when the tasks are due: "in:<seconds>" from now, "at:<unix seconds>", or ""
--         for now (queued)
-- ARGV[5] now (unix seconds), ARGV[6] seconds a record lives after it finishes
-- ARGV[7] "1" when each task's values end with its edges, else ""
-- ARGV[8] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[9] the workflow the tasks join, or ""
-- ARGV[10] seconds of grace for a guarded lone task's client to produce it, or ""
-- ARGV[11] how many fields every record of the call has, n; then their n names and values,
--         in pairs, from ARGV[12]
-- then m, how many fields each task has of its own, and their m names
-- then for each task: its id and its m values ("" leaves that field unset), then with
-- ARGV[7] its edges: "" for none, or JSON {"p": [parent ids], "t": [the parents whose
-- failure it tolerates]}
--
-- A task with parents is written `blocked` until they finish (lib/edges.lua moves it),
-- `skipped` if one already ended without success and the edge does not tolerate that, or
-- `queued` if every one already finished acceptably. Each parent's state is read here, in
-- the step that writes the child, so a parent finishing meanwhile cannot be missed. A
-- parent with no record refuses the whole call before anything is written.
-- Returns how many records it wrote, when they are due ("" when now), then the ids written
-- blocked and the ids written skipped; or {-1, the unknown parent's id}.
local due = ''
if ARGV[4] ~= '' then
  local kind, value = string.match(ARGV[4], '^(%a+):(.+)$')
  due = tonumber(value)
  if kind == 'in' then
    local time = redis.call('TIME')
    due = tonumber(time[1]) + tonumber(time[2]) / 1000000 + due
  end
end
local now, ttl, with_edges, workflow = tonumber(ARGV[5]), math.floor(tonumber(ARGV[6])),
  ARGV[7] == '1', ARGV[9]
local shared_count = tonumber(ARGV[11])
local shared = {}
for i = 12, 11 + 2 * shared_count do
  shared[#shared + 1] = ARGV[i]
end
local own_at = 12 + 2 * shared_count
local own_count = tonumber(ARGV[own_at])
local stride = 1 + own_count + (with_edges and 1 or 0)
local first = own_at + own_count + 1
local tasks = (#ARGV - first + 1) / stride

local edges = {}
if with_edges then  -- refuse an unknown parent before writing anything
  local prefix = edges_prefix(KEYS[7], ARGV[first])
  for i = 1, tasks do
    local spec = ARGV[first + i * stride - 1]
    if spec ~= '' then
      edges[i] = cjson.decode(spec)
      for _, parent in ipairs(edges[i].p) do
        if redis.call('EXISTS', prefix .. 'task:' .. parent) == 0 then
          return {-1, parent}
        end
      end
    end
  end
end

local ids, blocked, skipped = {}, {}, {}
local batch_key = string.sub(KEYS[1], 1, #KEYS[1] - #':tasks')
-- What the call's children do to their parents, gathered so that a parent shared by many
-- (a fan-out) is read once and written once a call: its status, how many new readers it
-- has, and its new children's entries.
local parent_status, new_readers, new_children, parent_order = {}, {}, {}, {}
local blocked_scores = {}
local ctx
for i = 1, tasks do
  local at = first + (i - 1) * stride
  local id, task_key = ARGV[at], KEYS[6 + i]
  local fields = {unpack(shared)}
  for j = 1, own_count do
    local value = ARGV[at + j]
    if value ~= '' then
      fields[#fields + 1] = ARGV[own_at + j]
      fields[#fields + 1] = value
    end
  end
  redis.call('HSET', task_key, unpack(fields))
  if due ~= '' then
    redis.call('HSET', task_key, 'status', 'scheduled', 'due_at', string.format('%.6f', due))
    redis.call('ZADD', KEYS[3], due, id)
  end
  if edges[i] then
    ctx = ctx or edges_context(edges_prefix(task_key, id), KEYS[4], '', '', now, ttl, now, 0)
    local tolerated = {}
    for _, parent in ipairs(edges[i].t or {}) do
      tolerated[parent] = true
    end
    local waiting, root, reason = 0, nil, nil
    for _, parent in ipairs(edges[i].p) do
      if parent_status[parent] == nil then
        parent_status[parent] = redis.call('HGET', ctx.P .. 'task:' .. parent, 'status')
        new_readers[parent], new_children[parent] = 0, {}
        parent_order[#parent_order + 1] = parent
      end
      local status = parent_status[parent]
      new_readers[parent] = new_readers[parent] + 1  -- kept while this child may read it
      if not EDGES_FINAL[status] then
        waiting = waiting + 1
        local entries = new_children[parent]
        entries[#entries + 1] = id
        entries[#entries + 1] = tolerated[parent] and '1' or '0'
      elseif status ~= 'success' and not tolerated[parent] and not root then
        root, reason = edges_skip_reason(ctx, parent, status)
      end
    end
    local record = {'parents', cjson.encode(edges[i].p), 'waiting', waiting}
    if #(edges[i].t or {}) > 0 then
      record[#record + 1], record[#record + 2] = 'tolerates', cjson.encode(edges[i].t)
    end
    if root or waiting > 0 then
      record[#record + 1], record[#record + 2] = 'status', 'blocked'
    end
    redis.call('HSET', task_key, unpack(record))
    if root then
      edges_skip(ctx, id, task_key, {'blocked', redis.call('HGET', task_key, 'batch') or '',
        '1', cjson.encode(edges[i].p), false}, root, reason)
      skipped[#skipped + 1] = id
    elseif waiting > 0 then
      blocked_scores[#blocked_scores + 1] = now
      blocked_scores[#blocked_scores + 1] = id
      blocked[#blocked + 1] = id
    end
  end
  ids[i] = id
end
for _, parent in ipairs(parent_order) do
  local parent_key = ctx.P .. 'task:' .. parent
  if #new_children[parent] > 0 then
    redis.call('HSET', parent_key .. ':children', unpack(new_children[parent]))
  end
  -- (a child skipped above has released its parents already: readers may end at 0)
  if redis.call('HINCRBY', parent_key, 'readers', new_readers[parent]) > 0 then
    redis.call('PERSIST', parent_key)
    redis.call('PERSIST', parent_key .. ':attempts')
  end
end
if #blocked_scores > 0 then
  redis.call('ZADD', KEYS[4], unpack(blocked_scores))
end
local not_queued = #blocked + #skipped
local stats = {submitted = tasks}
stats_move(stats, nil, '', due == '' and 'queued' or 'scheduled', tasks)
stats_move(stats, nil, 'queued', 'blocked', not_queued)
stats_write(stats_key(ARGV[8], 'events'), stats, ctx and ctx.stats or {})
if not_queued > 0 and ARGV[1] ~= '' then
  redis.call('HINCRBY', batch_key, 'queued', -not_queued)
  redis.call('HINCRBY', batch_key, 'blocked', not_queued)
end
if ctx and #ctx.changes > 0 then
  events_send(ARGV[8], cjson.encode(ctx.changes))
end
if ARGV[1] ~= '' and tasks > 0 then
  redis.call('RPUSH', KEYS[1], unpack(ids))
end
if workflow ~= '' and tasks > 0 then
  redis.call('RPUSH', KEYS[5], unpack(ids))
  redis.call('EXPIRE', KEYS[5], ttl)
end
if ARGV[10] ~= '' then
  local time = redis.call('TIME')
  redis.call('HSET', KEYS[7], 'unsent', '1')
  redis.call('ZADD', KEYS[6], tonumber(time[1]) + tonumber(ARGV[10]), ids[1])
end
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return {tasks, due == '' and '' or string.format('%.6f', due), blocked, skipped}
