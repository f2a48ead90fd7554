-- wake_limits.lua: the sweep behind the concurrency limits' wake-ups (lib/limits.lua). Every
-- way a task stops processing wakes one waiter; should a wake-up ever be missed (a holder's
-- record deleted by hand, say), a limit with free shares and waiters, idle for
-- LIMITS_STRANDED seconds, wakes as many waiters as it has free shares here. It also forgets
-- the limits no task holds, waits for or started under within their period. Safe in every
-- worker at once.
--
-- uses: limits.lua
--
-- Python side: yadtq/backend/limit_store.py, WakeLimitsCall. They lay out these KEYS and
-- ARGV and name the reply's fields: change the two together (tests/test_scripts.py runs
-- the codec against this script).
--
-- KEYS[1] limits set   yadtq:limits:<queue>
-- ARGV[1] the task key prefix  yadtq:task:
-- ARGV[2] now (unix seconds), or "" for Redis's clock
--
-- Returns how many waiters it woke.
local tasks = ARGV[1]
local now = tonumber(ARGV[2]) or limits_time()
local woken = 0
for _, L in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local info = redis.call('HMGET', L, 'n', 'active_at')
  local idle = now - (tonumber(info[2]) or 0) > LIMITS_STRANDED
  local waiting = redis.call('ZCARD', L .. ':waiting')
  local running = L .. ':running'
  if string.find(L, ':concurrency:', 1, true) then
    for _, other in ipairs(redis.call('ZRANGE', running, 0, -1)) do
      if redis.call('HGET', tasks .. other, 'status') ~= 'processing' then
        redis.call('ZREM', running, other)
      end
    end
    local free = (tonumber(info[1]) or 0) - redis.call('ZCARD', running)
    if free > 0 and waiting > 0 and idle then
      woken = woken + limits_wake(L, free, tasks)
      waiting = redis.call('ZCARD', L .. ':waiting')
    end
  end
  local busy = redis.call('EXISTS', running, L .. ':window')
  if busy == 0 and waiting == 0 and idle then
    redis.call('SREM', KEYS[1], L)
    redis.call('DEL', L, L .. ':next')
  end
end
return woken
