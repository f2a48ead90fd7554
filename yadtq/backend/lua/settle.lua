-- settle.lua: go on telling the children of finished tasks what became of their parents,
-- where the script that ended a parent stopped (a wide fan-out moves in bounded steps, see
-- lib/edges.lua), then take the readied children due in the unblocked set (those no worker
-- holds) for the caller to produce, holding them as take_due.lua does. Any worker may run
-- it at any time: each edge moves once, and each due child is taken by one caller.
--
-- uses: stats.lua
-- uses: edges.lua
-- uses: events.lua
--
-- Python side: yadtq/backend/scripts.py, SettleCall. They lay out these KEYS and ARGV and
-- name the reply's fields: change the two together (tests/test_scripts.py runs the codec
-- against this script).
--
-- KEYS[1] settling set   yadtq:settling:<queue>  (finished task id -> since when)
-- KEYS[2] blocked set    yadtq:blocked:<queue>
-- KEYS[3] unblocked set  yadtq:unblocked:<queue>  (child id -> when it is due)
-- ARGV[1] the key prefix with its colon ("yadtq:")
-- ARGV[2] now (unix seconds)
-- ARGV[3] seconds a record lives after it finishes
-- ARGV[4] events target (lib/events.lua: the channel, or it and an outbox)
-- ARGV[5] how many edges to move at most
-- ARGV[6] seconds the caller holds what it takes (the children it readies, and those due)
-- ARGV[7] how many due children to take at most
--
-- Returns the ids of the children the caller is to produce: those it readied, then those
-- that were due.
local now = tonumber(ARGV[2])
local hold = now + tonumber(ARGV[6])
local ctx = edges_context(ARGV[1], KEYS[2], KEYS[3], KEYS[1], now,
                          math.floor(tonumber(ARGV[3])), hold, tonumber(ARGV[5]))
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, 9)) do
  if ctx.budget <= 0 then
    break
  end
  local status = redis.call('HGET', ARGV[1] .. 'task:' .. id, 'status')
  if EDGES_FINAL[status] then
    edges_settle(ctx, id, status)
  else  -- run again since (a workflow's retry): its children wait for the new outcome
    redis.call('ZREM', KEYS[1], id)
  end
end
stats_write(stats_key(ARGV[4], 'events'), ctx.stats)
if #ctx.changes > 0 then
  events_send(ARGV[4], cjson.encode(ctx.changes))
end
local taken = ctx.readied
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0,
                               tonumber(ARGV[7]))) do
  redis.call('ZADD', KEYS[3], hold, id)
  taken[#taken + 1] = id
end
return taken
