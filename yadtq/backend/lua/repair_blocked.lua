-- repair_blocked.lua: find blocked tasks that nothing will ever move, and move them. A task
-- is blocked until its last parent ends (lib/edges.lua moves it then); one whose parents
-- have all ended, with none of them still settling its children, missed that move: a bug
-- somewhere, or a record lost by Redis. It is moved now as the move would have (queued, or
-- skipped when a parent it does not tolerate failing ended without success, or is gone),
-- and reported, so a hidden bug becomes a warning, not a hang. Safe in every worker.
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: events.lua
--
-- Python side: yadtq/backend/workflow_scripts.py, RepairBlockedCall. They lay out these KEYS
-- and ARGV and name the reply's fields: change the two together (tests/test_scripts.py runs
-- the codec against this script).
--
-- KEYS[1] blocked set    yadtq:blocked:<queue>  (task id -> since when)
-- KEYS[2] unblocked set  yadtq:unblocked:<queue>  (repaired queued tasks enter it due now)
-- KEYS[3] settling set   yadtq:settling:<queue>
-- ARGV[1] the key prefix with its colon ("yadtq:")
-- ARGV[2] now (unix seconds)
-- ARGV[3] seconds a record lives after it finishes
-- ARGV[4] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[5] how many of the longest-blocked tasks to look at
--
-- Returns the ids it moved.
local prefix, now = ARGV[1], tonumber(ARGV[2])
local ctx = edges_context(prefix, KEYS[1], KEYS[2], KEYS[3], now, math.floor(tonumber(ARGV[3])),
                          now, 0)
local repaired = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[5]) - 1)) do
  local key = prefix .. 'task:' .. id
  local record = redis.call('HMGET', key, 'status', 'batch', 'attempt', 'parents', 'readers',
                            'tolerates')
  if record[1] ~= 'blocked' then
    redis.call('ZREM', KEYS[1], id)  -- moved without leaving the set (cancelled, say)
  else
    local may_fail = {}
    for _, parent in ipairs(record[6] and cjson.decode(record[6]) or {}) do
      may_fail[parent] = true
    end
    local stuck, failed_parent, failed_status = true, nil, nil
    for _, parent in ipairs(record[4] and cjson.decode(record[4]) or {}) do
      local status = redis.call('HGET', prefix .. 'task:' .. parent, 'status')
      if (status and not EDGES_FINAL[status]) or redis.call('ZSCORE', KEYS[3], parent) then
        stuck = false  -- a parent can still finish, or is telling its children now
        break
      end
      if status ~= 'success' and not may_fail[parent] and not failed_parent then
        failed_parent, failed_status = parent, status or 'gone'
      end
    end
    if stuck then
      for _, parent in ipairs(record[4] and cjson.decode(record[4]) or {}) do
        redis.call('HDEL', prefix .. 'task:' .. parent .. ':children', id)
      end
      if failed_parent then
        local root, reason = edges_skip_reason(ctx, failed_parent, failed_status)
        edges_skip(ctx, id, key, record, root, reason)
        edges_settle(ctx, id, 'skipped')
      else
        redis.call('HSET', key, 'status', 'queued', 'waiting', 0, 'ready_at', tostring(now))
        redis.call('ZADD', KEYS[2], now, id)
        edges_moved(ctx, id, record[2] or '', 'blocked', 'queued', record[3])
      end
      repaired[#repaired + 1] = id
    end
  end
end
stats_write(stats_key(ARGV[4], 'events'), ctx.stats)
if #ctx.changes > 0 then
  events_send(ARGV[4], cjson.encode(ctx.changes))
end
return repaired
