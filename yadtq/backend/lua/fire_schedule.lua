-- fire_schedule.lua: fire a schedule's due occurrences, exactly once each, from any worker.
-- A compare-and-set on the schedule's revision: the caller read the schedule at revision
-- ARGV[2] and planned from it; if anything moved it since (another worker fired, a pause,
-- a replacement), nothing is done. Each fired occurrence becomes one task, its id derived
-- from the schedule and the occurrence, written `scheduled` and put in the scheduled set
-- due at its occurrence, so the scheduled-task path (take_due.lua, release.lua) produces
-- it, also when this caller dies right after. Every occurrence not fired is recorded in
-- the schedule's history as missed (catch-up) or skipped (overlap).
--
-- Python side: yadtq/backend/scripts.py, FireScheduleCall with a FireOccurrence per
-- occurrence to fire. They lay out these KEYS and ARGV and name the reply's fields:
-- change the two together (tests/test_scripts.py runs the codec against this script).
--
-- uses: stats.lua
--
-- KEYS[1] schedule hash      yadtq:schedule:<queue>:<name>
-- KEYS[2] schedules set      yadtq:schedules:<queue>  (name -> next occurrence)
-- KEYS[3] scheduled set      yadtq:scheduled:<queue>  (task id -> due)
-- KEYS[4] history list       yadtq:schedule-history:<queue>:<name>
-- KEYS[5] the task the schedule fired last, yadtq:task:<id> (any key when none)
-- then for each occurrence to fire 1 key: its task hash yadtq:task:<id>
-- ARGV[1] schedule name
-- ARGV[2] the revision the caller planned from
-- ARGV[3] the next occurrence after these, or "" to leave it (a trigger)
-- ARGV[4] now (unix seconds), or "" for Redis's own clock
-- ARGV[5] who fires (a worker id, or "client on <host>")
-- ARGV[6] overlap: allow | skip | queue_one
-- ARGV[7] "1" for a trigger (fires when paused, ignores overlap), else ""
-- ARGV[8] how many history rows to keep
-- ARGV[9] how many occurrences were missed but not listed (a long gap)
-- ARGV[10] n, how many missed occurrences follow; then the n occurrences
-- then for each occurrence to fire 3 args: occurrence, task id, its record's fields as a
--   JSON object (as enqueue.lua would write them)
--
-- History rows are JSON: occurrence (as given, text), task_id, outcome, fired_by, at.
--
-- Returns {"ok", ids of the tasks written...}, {"moved"}, {"paused"}, or {"early", now}
-- when an occurrence is not yet due on the clock it judged by.
local name, rev, next_at, firer, overlap = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6]
local trigger = ARGV[7] == '1'
if redis.call('HGET', KEYS[1], 'rev') ~= rev then
  return {'moved'}
end
if not trigger and redis.call('HGET', KEYS[1], 'paused') == '1' then
  return {'paused'}
end
local now = tonumber(ARGV[4])
if now == nil then
  local time = redis.call('TIME')
  now = tonumber(time[1]) + tonumber(time[2]) / 1000000
end
local missed_count = tonumber(ARGV[10])
local first = 11 + missed_count
local count = (#ARGV - first + 1) / 3
for i = 1, count do
  if tonumber(ARGV[first + 3 * i - 3]) > now + 0.001 then
    return {'early', tostring(now)}
  end
end

-- Overlap: the previous run unfinished holds back what would fire. Other than "allow",
-- at most one occurrence fires per call (the latest; earlier ones are skipped). "skip"
-- skips it while the previous run is unfinished; "queue_one" keeps it waiting in the
-- schedule (`buffered`, looked at again every BUFFER_LOOK s, a later one replacing it)
-- and fires it once the previous run has finished: the caller passes a waiting
-- occurrence back as the first of those to fire.
local BUFFER_LOOK = 1.0
local outcomes = {}
for i = 1, count do
  outcomes[i] = 'fired'
end
if not trigger and overlap ~= 'allow' and count > 0 then
  for i = 1, count - 1 do
    outcomes[i] = 'skipped'
  end
  local previous = redis.call('HGET', KEYS[5], 'status')
  if previous == 'scheduled' or previous == 'queued' or previous == 'processing' then
    outcomes[count] = overlap == 'queue_one' and 'buffered' or 'skipped'
  end
end

local rows, written, last = {}, {}, nil
for i = 1, missed_count do
  rows[#rows + 1] = cjson.encode({occurrence = ARGV[10 + i], task_id = '',
    outcome = 'missed', fired_by = firer, at = now})
end
local counts = {fired = 0, skipped = 0, buffered = 0}
local buffered = ''

for i = 1, count do
  local at = first + 3 * i - 3
  local occurrence, id = ARGV[at], ARGV[at + 1]
  local outcome = outcomes[i]
  if outcome == 'fired' then
    local task_key = KEYS[5 + i]
    if redis.call('EXISTS', task_key) == 0 then  -- never twice, even replayed
      local fields = {}
      for field, value in pairs(cjson.decode(ARGV[at + 2])) do
        fields[#fields + 1] = field
        fields[#fields + 1] = value
      end
      redis.call('HSET', task_key, unpack(fields))
      redis.call('HSET', task_key, 'status', 'scheduled', 'due_at', occurrence,
        'schedule', name, 'occurrence', occurrence, 'fired_by', firer)
      redis.call('ZADD', KEYS[3], occurrence, id)
      written[#written + 1] = id
    end
    last = id
  end
  counts[outcome] = counts[outcome] + 1
  if outcome == 'buffered' then
    buffered = occurrence  -- no row yet: fired or skipped later
  else
    rows[#rows + 1] = cjson.encode({occurrence = occurrence,
      task_id = outcome == 'fired' and id or '', outcome = outcome, fired_by = firer, at = now})
  end
end

if #written > 0 then
  local stats = {submitted = #written}
  stats_move(stats, nil, '', 'scheduled', #written)
  stats_write(stats_key(KEYS[2], 'schedules'), stats)
end
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HINCRBY', KEYS[1], 'fired', counts.fired)
redis.call('HINCRBY', KEYS[1], 'skipped', counts.skipped)
redis.call('HINCRBY', KEYS[1], 'missed', missed_count + tonumber(ARGV[9]))
if last ~= nil then
  redis.call('HSET', KEYS[1], 'last_task', last)
end
if not trigger then
  redis.call('HSET', KEYS[1], 'buffered', buffered)
end
if next_at ~= '' then
  redis.call('HSET', KEYS[1], 'next', next_at)
  local look = tonumber(next_at)
  if buffered ~= '' and now + BUFFER_LOOK < look then
    look = now + BUFFER_LOOK
  end
  redis.call('ZADD', KEYS[2], look, name)
end
if #rows > 0 then
  redis.call('RPUSH', KEYS[4], unpack(rows))
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
end
table.insert(written, 1, 'ok')
return written
