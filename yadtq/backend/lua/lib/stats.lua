-- lib/stats.lua: the queue's counters, moved by the same scripts that move task states (in
-- the step that moves them), so they add up with the records and never reset when a worker
-- restarts. Not a script of its own: script_runner puts it in front of each script whose
-- header says "-- uses: stats.lua" (before edges.lua, which counts the moves it makes).
--
-- yadtq:stats:<queue>  hash (named like the queue's other keys, "stats" for their kind)
--   submitted               tasks written (enqueue, a schedule firing, a claim of a task
--                           whose message came without a record)
--   now:<status>            tasks in that status now, for the statuses a task leaves
--                           (blocked, scheduled, queued, processing)
--   done:<status>:<task>    final outcomes so far, per status and task name
--   retried                 attempts that failed and were queued to run again (finish.lua)
--   requeued                tasks queued again after an expired lease or a dead worker
--   dead_lettered           tasks ended because workers refused their message
-- A scripts tallies its moves in a table (stats_move, stats_add) and writes them once at its
-- end (stats_write), one HINCRBY per field that changed.

local STATS_LIVE = {blocked = true, scheduled = true, queued = true, processing = true}
local STATS_FINAL = {success = true, failed = true, cancelled = true, skipped = true}

-- Add `by` to a field of the tally.
local function stats_add(tally, field, by)
  tally[field] = (tally[field] or 0) + by
end

-- Count `n` tasks (named `task`) moving from one status to another; "" for `from` is a task
-- just written.
local function stats_move(tally, task, from, to, n)
  n = n or 1
  if STATS_LIVE[from] then
    stats_add(tally, 'now:' .. from, -n)
  end
  if STATS_LIVE[to] then
    stats_add(tally, 'now:' .. to, n)
  elseif STATS_FINAL[to] then
    stats_add(tally, 'done:' .. to .. ':' .. (task or '?'), n)
  end
end

-- The queue's counters' key, from another key or channel of the queue and its kind
-- (yadtq:events:<queue> and 'events' give yadtq:stats:<queue>).
local function stats_key(queue_key, kind)
  queue_key = string.match(queue_key, '^[^\n]*')  -- an events target may name an outbox too
  return (string.gsub(queue_key, ':' .. kind .. ':', ':stats:', 1))
end

-- Write the tallies (any number of them) to the queue's counters at `key` (stats_key).
local function stats_write(key, ...)
  for _, tally in ipairs({...}) do
    for field, by in pairs(tally) do
      if by ~= 0 then
        redis.call('HINCRBY', key, field, by)
      end
    end
  end
end
