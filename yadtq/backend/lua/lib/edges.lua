-- lib/edges.lua: what a task's final outcome does to the tasks that depend on it
-- (workflows). Not a script of its own: script_runner puts it in front of each script whose
-- header says "-- uses: edges.lua" (enqueue, finish, cancel, fail_queued, settle,
-- repair_blocked), so every way a task can end moves its children the same way.
--
-- The edges of a task live in two places, both written by enqueue.lua with the child:
--   yadtq:task:<parent>:children  hash  child id -> "1" if the child runs even when this
--                                       parent fails, else "0"; an entry is removed as the
--                                       edge moves, so no edge moves twice
--   yadtq:task:<child>            hash  parents (JSON list of ids), waiting (how many have
--                                       not finished), readers on the parent (how many
--                                       children have not finished: the parent's record
--                                       does not expire while a child may read its result)
--
-- Each function takes a context made by edges_context: the key prefix (read off a task key,
-- so no script needs it as an argument), the queue's blocked, unblocked and settling sets,
-- the time, the records' TTL, the score readied children enter the unblocked set with (now,
-- or later when the caller produces them itself), how many edges may still move in this call,
-- and what it fills: events to publish, readied children, and the moves for the queue's
-- counters (lib/stats.lua, which a script using this library names before it).

local EDGES_FINAL = {success = true, failed = true, cancelled = true, skipped = true}

-- The key prefix ("yadtq:"), read off a task's key and id.
local function edges_prefix(task_key, id)
  return string.sub(task_key, 1, #task_key - #id - #'task:')
end

local function edges_context(prefix, blocked_key, unblocked_key, settling_key, now, ttl,
                             ready_score, budget)
  return {P = prefix, blocked = blocked_key,
          unblocked = unblocked_key, settling = settling_key, now = now, ttl = ttl,
          ready_score = ready_score, budget = budget, changes = {}, readied = {},
          stats = {}}
end

-- A final task's record and history expire, unless a child still needs its result
-- (`readers`, the record's field).
local function edges_expire(ctx, task_key, readers)
  if (tonumber(readers) or 0) <= 0 then
    redis.call('EXPIRE', task_key, ctx.ttl)
    redis.call('EXPIRE', task_key .. ':attempts', ctx.ttl)
  end
end

-- A task reached a final status: each parent has one reader fewer, and a final parent that
-- no child needs any more starts to expire.
local function edges_release_parents(ctx, parents_json)
  if not parents_json or parents_json == '' then
    return
  end
  for _, parent in ipairs(cjson.decode(parents_json)) do
    local key = ctx.P .. 'task:' .. parent
    local status = redis.call('HGET', key, 'status')
    if status and redis.call('HINCRBY', key, 'readers', -1) <= 0 and EDGES_FINAL[status] then
      redis.call('EXPIRE', key, ctx.ttl)
      redis.call('EXPIRE', key .. ':attempts', ctx.ttl)
    end
  end
end

-- Why a child of `parent` (which ended `status`) is skipped: the root task and its error.
local function edges_skip_reason(ctx, parent, status)
  local p = redis.call('HMGET', ctx.P .. 'task:' .. parent, 'task', 'error_type', 'error',
                       'root', 'root_error')
  if status == 'skipped' and p[4] then
    return p[4], p[5] or ''
  end
  local why = status
  if p[2] then
    why = status .. ': ' .. p[2] .. ': ' .. (p[3] or '')
  end
  return parent, 'task ' .. parent .. ' (' .. (p[1] or '?') .. ') ' .. why
end

-- Count a task's move in its batch, the queue's counters and the events, and take it off
-- the blocked set.
local function edges_moved(ctx, id, batch, from, to, attempt, task)
  redis.call('ZREM', ctx.blocked, id)
  stats_move(ctx.stats, task, from, to)
  if batch ~= '' then
    local batch_key = ctx.P .. 'batch:' .. batch
    redis.call('HINCRBY', batch_key, from, -1)
    redis.call('HINCRBY', batch_key, to, 1)
    if EDGES_FINAL[to] then
      redis.call('EXPIRE', batch_key, ctx.ttl)
      redis.call('EXPIRE', batch_key .. ':tasks', ctx.ttl)
    end
  end
  ctx.changes[#ctx.changes + 1] = {id = id, status = to, worker = '', batch = batch,
    attempt = tonumber(attempt), at = ctx.now}
end

-- Skip a blocked task: a parent it does not tolerate failing ended without success.
local function edges_skip(ctx, id, task_key, record, root, reason)
  redis.call('HSET', task_key, 'status', 'skipped', 'error_type', 'TaskSkipped',
             'error', 'skipped: upstream ' .. reason, 'root', root, 'root_error', reason,
             'finished_at', tostring(ctx.now))
  redis.call('RPUSH', task_key .. ':attempts', cjson.encode({event = 'skipped', at = ctx.now,
    attempt = tonumber(record[3]), worker = '', detail = 'upstream ' .. reason}))
  edges_moved(ctx, id, record[2] or '', 'blocked', 'skipped', record[3],
              redis.call('HGET', task_key, 'task'))
  edges_expire(ctx, task_key, record[5])
  edges_release_parents(ctx, record[4])
end

-- Tell the children of `parent`, now final with `status`, and theirs in turn for children it
-- skips: a child counts one parent fewer and is queued (readied) when none is left, or is
-- skipped when the parent did not succeed and the edge does not tolerate that. At most
-- ctx.budget edges move; a task with children left goes in the settling set, for
-- settle.lua to go on with (wide fan-outs move in bounded steps).
local function edges_settle(ctx, parent, status)
  local work = {{parent, status}}
  while #work > 0 do
    local item = table.remove(work)
    local from, from_status = item[1], item[2]
    local children_key = ctx.P .. 'task:' .. from .. ':children'
    local root, reason
    local cursor = '0'
    repeat  -- through the whole hash if need be: entries moved are gone from it
      if ctx.budget <= 0 then
        break
      end
      local scan = redis.call('HSCAN', children_key, cursor, 'COUNT', ctx.budget)
      cursor = scan[1]
      local fields = scan[2]
      for i = 1, #fields, 2 do
        if ctx.budget <= 0 then
          break
        end
        local child, tolerant = fields[i], fields[i + 1]
        if redis.call('HDEL', children_key, child) == 1 then
          ctx.budget = ctx.budget - 1
          local child_key = ctx.P .. 'task:' .. child
          -- not its parents: a fan-in's child lists thousands, read here once per parent
          local record = redis.call('HMGET', child_key, 'status', 'batch', 'attempt')
          if record[1] == 'blocked' then
            if from_status ~= 'success' and tolerant ~= '1' then
              if not root then
                root, reason = edges_skip_reason(ctx, from, from_status)
              end
              local more = redis.call('HMGET', child_key, 'parents', 'readers')
              record[4], record[5] = more[1], more[2]
              edges_skip(ctx, child, child_key, record, root, reason)
              work[#work + 1] = {child, 'skipped'}
            elseif redis.call('HINCRBY', child_key, 'waiting', -1) <= 0 then
              redis.call('HSET', child_key, 'status', 'queued', 'ready_at', tostring(ctx.now))
              redis.call('ZADD', ctx.unblocked, ctx.ready_score, child)
              edges_moved(ctx, child, record[2] or '', 'blocked', 'queued', record[3])
              ctx.readied[#ctx.readied + 1] = child
            end
          end
        end
      end
    until cursor == '0'
    if redis.call('EXISTS', children_key) == 1 then
      redis.call('ZADD', ctx.settling, ctx.now, from)
    else
      redis.call('ZREM', ctx.settling, from)
    end
  end
end

-- A task reached a final status (`status`): its parents have one reader fewer, and its
-- children hear of it. `readers` and `parents_json` are the task's fields (false when
-- unset: a task that never had children has no readers field, and costs nothing here).
local function edges_final(ctx, id, status, readers, parents_json)
  edges_release_parents(ctx, parents_json)
  if readers then
    edges_settle(ctx, id, status)
  end
end
