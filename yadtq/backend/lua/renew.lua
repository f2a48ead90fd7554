-- renew.lua: extend the leases of the tasks a worker still holds.
-- A worker that was frozen past its lease may still list tasks that were reaped and
-- claimed by another worker; those leases are not its to extend, so they are left alone.
--
-- Python side: yadtq/backend/scripts.py, RenewCall. They lay out
-- these KEYS and ARGV and name the reply's fields: change the two together
-- (tests/test_scripts.py runs the codec against this script).
--
-- KEYS[1]    leases sorted set  yadtq:leases:<queue>
-- KEYS[2..]  task hashes        yadtq:task:<id>, one per task id in ARGV[3..]
-- ARGV[1]    worker id
-- ARGV[2]    new lease expiry (unix seconds)
-- ARGV[3..]  task ids
--
-- Returns the ids of the tasks that were cancelled, so the worker can stop them without
-- asking again.
local cancelled = {}
for i = 3, #ARGV do
  local record = redis.call('HMGET', KEYS[i - 1], 'status', 'worker')
  if record[1] == 'processing' and record[2] == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
  elseif record[1] == 'cancelled' then
    cancelled[#cancelled + 1] = ARGV[i]
  end
end
return cancelled
