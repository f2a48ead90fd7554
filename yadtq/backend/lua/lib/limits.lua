-- lib/limits.lua: a task's rate and concurrency limits (yadtq/limits.py), decided where
-- tasks are claimed, on Redis's clock. Not a script of its own: script_runner puts it in
-- front of each script whose header says "-- uses: limits.lua": claim.lua admits or refuses
-- a limited task; finish.lua, requeue.lua and cancel.lua (every way a task stops
-- processing) give its concurrency share back and wake the oldest waiter; wake_limits.lua
-- wakes the waiters of a limit a missed wake-up left with free shares.
--
-- A limit L is a key under the queue's limit base (yadtq:limit:<queue>:), one per task
-- name, and per rate key value for a keyed rate:
--   L = <base>rate:<task>|<key>  or  <base>concurrency:<task>
--   L              hash    spec (its text, "rate 20/s"), task, n, due (the scheduled set its
--                          waiters go to when woken), active_at (last admission or wake-up)
--   L:window       zset    rate: one entry per start in the last period (id:attempt -> when)
--   L:next         string  rate: the start time the next refused task is given (spreads them)
--   L:running      zset    concurrency: the tasks holding a share (id -> since)
--   L:waiting      zset    the tasks waiting for L (id -> since they first waited)
-- and the queue's set of limits (yadtq:limits:<queue>), for the queue view and the sweep.
-- A limited task's record has `share` (L of the concurrency share it holds while
-- processing), and while it waits `waits_on` (L) and `waits_for` (L's spec, for displays).
--
-- No path can leak a share: every script that ends a processing task calls
-- limits_release, and a claim that finds a limit full first drops the entries whose task
-- is no longer processing (a record that vanished, say).

local LIMITS_STRANDED = 5  -- seconds: a limit with free shares and waiters, idle this long,
                           -- wakes them (wake_limits.lua)

local function limits_time()
  local time = redis.call('TIME')
  return tonumber(time[1]) + tonumber(time[2]) / 1000000
end

-- ``fixed``: "" judges by Redis's clock (read once, when a limit is first asked);
-- a number is a test's clock. ``tasks``: the task key prefix ("yadtq:task:").
local function limits_context(base, registry, due_key, tasks, fixed)
  return {base = base, registry = registry, due = due_key, tasks = tasks,
          fixed = tonumber(fixed)}
end

local function limits_now(ctx)
  if not ctx.now then
    ctx.now = ctx.fixed or limits_time()
  end
  return ctx.now
end

-- The task key prefix, read off a task's key and id.
local function limits_tasks(task_key, id)
  return string.sub(task_key, 1, #task_key - #id)
end

-- The rate limit of a spec: its key, and nil if one more may start now, else the earliest
-- time one more may (the window's oldest start that must leave it, plus the period).
local function limits_rate(ctx, task, spec)
  local n, period = spec.r[1], spec.r[2]
  local L = ctx.base .. 'rate:' .. task .. '|' .. (spec.k or '')
  local window = L .. ':window'
  local now = limits_now(ctx)
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now - period)
  local count = redis.call('ZCARD', window)
  if count < n then
    return L, nil
  end
  local nth = redis.call('ZRANGE', window, count - n, count - n, 'WITHSCORES')
  return L, tonumber(nth[2]) + period
end

-- The concurrency limit of a task: its key, and whether a share is free. A full limit first
-- drops the holders no longer processing.
local function limits_concurrency(ctx, task, n)
  local L = ctx.base .. 'concurrency:' .. task
  local running = L .. ':running'
  local count = redis.call('ZCARD', running)
  if count >= n then
    for _, other in ipairs(redis.call('ZRANGE', running, 0, -1)) do
      if redis.call('HGET', ctx.tasks .. other, 'status') ~= 'processing' then
        redis.call('ZREM', running, other)
        count = count - 1
      end
    end
  end
  return L, count < n
end

local function limits_describe(ctx, L, spec_text, task, n)
  redis.call('HSET', L, 'spec', spec_text, 'task', task, 'n', n, 'due', ctx.due,
             'active_at', tostring(limits_now(ctx)))
  redis.call('SADD', ctx.registry, L)
end

-- Admit task ``id`` (attempt ``attempt``) of ``task`` under ``spec`` (Limits.claim_spec),
-- or refuse it. ``waited``: the limit the task waited for last time (its `waits_on`), so a
-- task refused again after its turn keeps its place rather than going to the back.
-- Returns nil and the concurrency share it now holds (or nil), or a refusal:
-- {reason, due time or nil (a concurrency waiter: woken when a share is free), L, text}.
local function limits_admit(ctx, spec, id, task, attempt, waited)
  local rate_key, earliest, share, free
  if spec.r then
    rate_key, earliest = limits_rate(ctx, task, spec)
  end
  if spec.c and not earliest then
    share, free = limits_concurrency(ctx, task, spec.c)
  end
  local now = limits_now(ctx)
  if earliest then
    local n, period = spec.r[1], spec.r[2]
    local text = 'rate ' .. spec.rt .. (spec.k ~= '' and (' (' .. spec.k .. ')') or '')
    local due = earliest
    if waited ~= rate_key then  -- a new waiter takes the next turn and spreads the rest
      local next_key = rate_key .. ':next'
      due = math.max(earliest, tonumber(redis.call('GET', next_key)) or 0)
      local after = due + period / n
      redis.call('SET', next_key, string.format('%.6f', after), 'PX',
                 math.ceil((after - now + period) * 1000))
    end
    limits_describe(ctx, rate_key, text, task, n)
    return {'rate limited', due, rate_key, text}, nil
  end
  if share and not free then
    local text = 'concurrency ' .. spec.c
    limits_describe(ctx, share, text, task, spec.c)
    return {'concurrency limited', nil, share, text}, nil
  end
  if rate_key then
    local window = rate_key .. ':window'
    redis.call('ZADD', window, now, id .. ':' .. attempt)
    redis.call('PEXPIRE', window, math.ceil(spec.r[2] * 1000) + 1000)
    limits_describe(ctx, rate_key, 'rate ' .. spec.rt .. (spec.k ~= '' and
                    (' (' .. spec.k .. ')') or ''), task, spec.r[1])
  end
  if share then
    redis.call('ZADD', share .. ':running', now, id)
    limits_describe(ctx, share, 'concurrency ' .. spec.c, task, spec.c)
  end
  return nil, share
end

-- Wake up to ``count`` of L's oldest waiters: due now in L's scheduled set (the maintenance
-- thread produces them; each is judged again when claimed). Returns how many.
local function limits_wake(L, count, tasks)
  local due_key = redis.call('HGET', L, 'due')
  if not due_key then
    return 0
  end
  local now = limits_time()
  local woken = 0
  while woken < count do
    local popped = redis.call('ZPOPMIN', L .. ':waiting')
    if #popped == 0 then
      break
    end
    local task_key = tasks .. popped[1]
    local current = redis.call('HMGET', task_key, 'status', 'waits_on')
    if current[1] == 'scheduled' and current[2] == L then
      redis.call('ZADD', due_key, now, popped[1])
      redis.call('HDEL', task_key, 'waits_on')
      woken = woken + 1
    end
  end
  if woken > 0 then
    redis.call('HSET', L, 'active_at', tostring(now))
  end
  return woken
end

-- A task stops processing (``share``: its record's `share`, or nil): give the share back
-- and wake the oldest waiter for it.
local function limits_release(task_key, id, share)
  if not share or share == '' then
    return
  end
  redis.call('HDEL', task_key, 'share')
  if redis.call('ZREM', share .. ':running', id) == 1 then
    limits_wake(share, 1, limits_tasks(task_key, id))
  end
end

-- A waiting task ends (cancelled): it no longer waits for ``waits_on`` (its record's).
local function limits_unwait(id, waits_on)
  if waits_on and waits_on ~= '' then
    redis.call('ZREM', waits_on .. ':waiting', id)
  end
end
