"""Schedules: a task on a cron expression or every N seconds, fired by any live worker,
exactly one task per occurrence (issue 22, part 2).

Occurrence maths, time zones and catch-up are tested with an injected clock
(``ScheduleFirer.fire_due(now=...)`` judges by it instead of Redis's TIME), never by
waiting; end-to-end tests use a 1 s schedule only to prove the whole path.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import subprocess
import sys
import uuid
from zoneinfo import ZoneInfo

import pytest
from helpers import wait_until

import yadtq
from worker_node.tasks import add
from yadtq.backend.records import record_signed
from yadtq.schedule_times import ScheduleSpec, plan
from yadtq.schedules import fire
from yadtq.worker.schedule_firing import ScheduleFirer

BERLIN = ZoneInfo("Europe/Berlin")


def at(*fields: int, tz: ZoneInfo = BERLIN, fold: int = 0) -> float:
    return datetime.datetime(*fields, tzinfo=tz, fold=fold).timestamp()


def local(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, BERLIN).strftime("%Y-%m-%d %H:%M %Z")


# --- occurrence maths (no servers) -------------------------------------------------------


def test_a_local_time_skipped_by_spring_forward_fires_at_the_next_valid_minute():
    spec = ScheduleSpec(cron="30 2 * * *", tz="Europe/Berlin")
    first = spec.next_after(at(2026, 3, 28, 12, 0))
    assert local(first) == "2026-03-29 03:00 CEST"
    assert local(spec.next_after(first)) == "2026-03-30 02:30 CEST"


def test_a_fixed_local_time_repeated_by_fall_back_fires_once():
    spec = ScheduleSpec(cron="30 2 * * *", tz="Europe/Berlin")
    first = spec.next_after(at(2026, 10, 24, 12, 0))
    second = spec.next_after(first)
    assert (local(first), local(second)) == ("2026-10-25 02:30 CEST", "2026-10-26 02:30 CET")


def test_an_every_half_hour_cron_keeps_real_half_hours_through_fall_back():
    spec = ScheduleSpec(cron="*/30 * * * *", tz="Europe/Berlin")
    t, seen = at(2026, 10, 25, 1, 50), []
    for _ in range(5):
        t = spec.next_after(t)
        seen.append(t)
    # 02:00, 02:30, then 02:00 and 02:30 again, then 03:00
    assert [b - a for a, b in zip(seen, seen[1:], strict=False)] == [1800.0] * 4


def test_every_counts_from_its_anchor_without_drift():
    spec = ScheduleSpec(every=2, anchor=100.0)
    assert [spec.next_after(t) for t in (100.0, 101.9, 102.0, 1e6 + 0.5)] == \
        [102.0, 102.0, 104.0, 1e6 + 2]


@pytest.mark.parametrize("catchup, fired, missed", [
    ("one", [110.0], [101.0 + i for i in range(9)]),
    ("all", [101.0 + i for i in range(10)], []),
    ("none", [110.0], [101.0 + i for i in range(9)]),
])
def test_after_a_gap_each_catchup_mode_fires_what_it_promises(catchup, fired, missed):
    # Given a 1 s schedule last fired at 100, looked at again at 110.5
    spec = ScheduleSpec(every=1, anchor=0.0, catchup=catchup)
    result = plan(spec, 101.0, 110.5)
    assert (result.fired, result.missed, result.next_at) == (fired, missed, 111.0)


def test_catchup_none_fires_nothing_that_is_late():
    result = plan(ScheduleSpec(every=10, anchor=0.0, catchup="none"), 100.0, 105.0)
    assert (result.fired, result.missed, result.next_at) == ([], [100.0], 110.0)


@pytest.mark.parametrize("kwargs, says", [
    ({}, "exactly one"),
    ({"cron": "* * *", "every": 5}, "exactly one"),
    ({"cron": "61 * * * *"}, "not a valid"),
    ({"every": 0.1}, "at least 1"),
    ({"every": 5, "tz": "Mars/Olympus"}, "IANA"),
    ({"every": 5, "catchup": "some"}, "catchup"),
    ({"every": 5, "overlap": "queue"}, "overlap"),
])
def test_a_bad_schedule_is_refused_with_what_to_pass(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ScheduleSpec(**kwargs)


# --- firing, on a real Redis with an injected clock -------------------------------------


def set_next(client: yadtq.Client, name: str, next_at: float) -> None:
    """Move a schedule's next occurrence (test setup: what a firing would have left), an
    every-schedule's occurrences counted from 0 (whole seconds)."""
    keys = client.backend.keys
    spec = ScheduleSpec.from_json(client.backend.schedules.get(name)["spec"])
    client.backend.redis.hset(keys.schedule(name), "spec",
                              dataclasses.replace(spec, anchor=0.0).to_json())
    client.backend.redis.hset(keys.schedule(name), "next", repr(next_at))
    client.backend.redis.zadd(keys.schedules, {name: next_at})


def test_one_task_per_occurrence_when_two_workers_fire_from_the_same_read(client):
    # Given a 10 s schedule due, read by two workers at once
    client.schedule("tick", add, every=10, args=(1, 2), overlap="allow")
    set_next(client, "tick", 1000.0)
    raw = client.backend.schedules.get("tick")

    # When both fire from that read
    first = fire(client.backend, "tick", raw, 1000.5, "w1", inject_now=True)
    second = fire(client.backend, "tick", raw, 1000.5, "w2", inject_now=True)

    # Then one wrote the task and the other was refused; the task waits scheduled
    assert first[0] == "ok" and len(first[1]) == 1 and second == ("moved", [])
    record = client.task_record(first[1][0])
    assert record["status"] == "scheduled" and record["due_at"] == 1000.0
    assert record["fired_by"] == "w1" and record["schedule"] == "tick"
    assert client.backend.scheduled.due_at(first[1]) == [1000.0]
    assert [(r["outcome"], r["fired_by"]) for r in
            client.backend.schedules.history("tick")] == [("fired", "w1")]


def test_a_worker_whose_clock_runs_ahead_cannot_fire_early(client):
    client.schedule("later", add, every=3600, args=(1, 2))
    raw = client.backend.schedules.get("later")
    now = client.backend.schedules.now()
    # Given a worker that plans as if an hour had passed, the script judges by Redis's clock
    verdict, written = fire(client.backend, "later", raw, now + 3601, "w1")
    assert verdict == "early"
    assert client.backend.schedules.history("later") == []


def test_the_fired_record_is_the_one_submit_would_write_and_is_signed(config):
    # Given a client with a secret
    signed = dataclasses.replace(config, secret=uuid.uuid4().hex)
    with yadtq.Client(signed) as client:
        client.schedule("signed", add, every=5, args=(2, 3), max_retries=2)
        set_next(client, "signed", 500.0)
        # When a worker with the same secret fires it
        fired = ScheduleFirer(client.backend, "w1").fire_due(now=500.1)
        [row] = client.backend.schedules.history("signed")
        fields = {k.decode(): v.decode() for k, v in client.backend.redis.hgetall(
            client.backend.keys.task(row["task_id"])).items()}
    # Then its record carries the call and the options, signed for its own id
    assert fired == 1
    assert (fields["task"], fields["args"], fields["max_retries"]) == ("add", "[2, 3]", "2")
    assert record_signed(signed.secret, row["task_id"], fields)


def test_a_schedule_whose_stored_message_was_altered_is_not_fired_and_others_still_are(
    config,
):
    # Given two schedules stored by a client with a secret, one altered in Redis since
    signed = dataclasses.replace(config, secret=uuid.uuid4().hex)
    with yadtq.Client(signed) as client:
        for name in ("altered", "intact"):
            client.schedule(name, add, every=5, args=(1, 2))
            set_next(client, name, 500.0)
        key = client.backend.keys.schedule("altered")
        template = client.backend.redis.hget(key, "template").decode()
        client.backend.redis.hset(key, "template", template.replace("[1,2]", "[1,999]"))

        # When a worker with the secret looks
        fired = ScheduleFirer(client.backend, "w1").fire_due(now=500.1)

        # Then only the intact one fired: the altered message fails its signature check
        assert fired == 1
        assert client.backend.schedules.history("altered") == []
        assert [r["outcome"] for r in client.backend.schedules.history("intact")] == ["fired"]


def test_catchup_and_overlap_are_recorded_in_the_history(client):
    # Given a 1 s schedule with overlap "skip" whose next run was at 100
    firer = ScheduleFirer(client.backend, "w1")
    schedule = client.schedule("gap", add, every=1, args=(1, 1), catchup="one")
    set_next(client, "gap", 100.0)

    # When a worker looks again at 110.5 (no worker was live), and at 111.1
    firer.fire_due(now=110.5)
    firer.fire_due(now=111.1)  # the 110 run is still scheduled: nothing produces it here

    # Then 100..109 are missed, 110 fired, 111 skipped (the previous run is unfinished)
    rows = schedule.history_rows()
    assert [r["outcome"] for r in rows] == ["missed"] * 10 + ["fired", "skipped"]
    assert rows[10]["occurrence"] == 110.0 and rows[10]["status"] == "scheduled"
    assert rows[0]["task_id"] is None and rows[0]["status"] is None


@pytest.mark.parametrize("catchup, outcomes", [
    ("one", ["missed"] * 4 + ["fired"]),
    ("all", ["fired"] * 5),
    ("none", ["missed"] * 5),
])
def test_each_catchup_mode_records_what_it_fired_and_missed_after_downtime(
    client, catchup, outcomes
):
    # Given a 2 s schedule due at 100, and no live worker until 109.5
    client.schedule("down", add, every=2, args=(1, 1), catchup=catchup, overlap="allow")
    set_next(client, "down", 100.0)

    # When a worker looks then (the 108 run is 1.5 s late)
    ScheduleFirer(client.backend, "w1").fire_due(now=109.5)

    # Then the history says what the mode promises, one row per occurrence
    rows = client.backend.schedules.history("down")
    assert [r["occurrence"] for r in rows] == [100.0, 102.0, 104.0, 106.0, 108.0]
    assert [r["outcome"] for r in rows] == outcomes
    assert client.backend.schedules.get("down")["next"] == "110.0"


def test_queue_one_keeps_one_occurrence_waiting_until_the_previous_run_finishes(client):
    # Given a minutely schedule whose first run (at 120) has not finished
    firer = ScheduleFirer(client.backend, "w1")
    client.schedule("q1", add, every=60, args=(1, 1), overlap="queue_one")
    set_next(client, "q1", 120.0)
    firer.fire_due(now=120.1)
    [first] = [r["task_id"] for r in client.backend.schedules.history("q1")]
    client.backend.redis.hset(client.backend.keys.task(first), "status", "processing")

    # When the 180 occurrence comes while it runs, and the run ends a little later
    assert firer.fire_due(now=180.1) == 0  # waits, looked at again a second later
    assert firer.fire_due(now=180.9) == 0  # not looked at yet
    assert firer.fire_due(now=181.2) == 0  # still running: still waits
    client.backend.redis.hset(client.backend.keys.task(first), "status", "success")
    assert firer.fire_due(now=182.3) == 1

    # Then the waiting occurrence fired once the previous run finished, none skipped
    rows = client.backend.schedules.history("q1")
    assert [(r["occurrence"], r["outcome"]) for r in rows] == [(120.0, "fired"),
                                                               (180.0, "fired")]
    assert client.backend.schedules.get("q1")["buffered"] == ""


def test_queue_one_keeps_only_the_latest_waiting_occurrence(client):
    firer = ScheduleFirer(client.backend, "w1")
    client.schedule("q2", add, every=1, args=(1, 1), overlap="queue_one")
    set_next(client, "q2", 100.0)
    firer.fire_due(now=100.1)  # fired, and stays scheduled: nothing produces it here
    firer.fire_due(now=101.1)  # 101 waits
    firer.fire_due(now=102.1)  # 102 waits instead; 101 skipped
    assert [(r["occurrence"], r["outcome"]) for r in client.backend.schedules.history("q2")
            ] == [(100.0, "fired"), (101.0, "skipped")]
    assert client.backend.schedules.get("q2")["buffered"] == "102.0"


def test_a_cron_schedule_fires_through_spring_forward_and_fall_back_once_a_day(client):
    # Given a daily 02:30 Berlin schedule, its next run before the spring-forward night
    firer = ScheduleFirer(client.backend, "w1")
    schedule = client.schedule("nightly", add, cron="30 2 * * *", tz="Europe/Berlin",
                               args=(1, 2), overlap="allow")
    set_next(client, "nightly", at(2026, 3, 28, 2, 30))

    # When a worker looks a few seconds after each occurrence it expects, for 3 nights,
    # then over the fall-back night
    for _night in range(3):
        firer.fire_due(now=float(client.backend.schedules.get("nightly")["next"]) + 0.5)
    set_next(client, "nightly", at(2026, 10, 24, 2, 30))
    for _ in range(3):
        firer.fire_due(now=float(client.backend.schedules.get("nightly")["next"]) + 0.5)

    # Then it fired at 03:00 on the night 02:30 did not exist, and once on the night it
    # happened twice
    fired = [local(r["occurrence"]) for r in schedule.history_rows()]
    assert fired == ["2026-03-28 02:30 CET", "2026-03-29 03:00 CEST", "2026-03-30 02:30 CEST",
                     "2026-10-24 02:30 CEST", "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]


def test_a_paused_schedule_does_not_fire_and_resumes_from_the_next_occurrence(client):
    firer = ScheduleFirer(client.backend, "w1")
    schedule = client.schedule("p", add, every=60, args=(1, 1))
    set_next(client, "p", 100.0)
    schedule.pause()
    assert schedule.paused and schedule.next_run is None
    assert firer.fire_due(now=200.0) == 0
    schedule.resume()
    now = client.backend.schedules.now()
    assert now < schedule.next_run.timestamp() <= now + 60
    assert client.backend.schedules.history("p") == []


def test_declaring_a_schedule_again_keeps_its_next_run_and_removal_forgets_it(client):
    first = client.schedule("again", add, every=30, args=(1, 1))
    before = first.next_run
    second = client.schedule("again", add, every=30, args=(5, 5))
    assert second.next_run == before
    assert [row["name"] for row in client.schedules().to_dict("records")] == ["again"]
    second.remove()
    with pytest.raises(yadtq.ScheduleNotFound, match="again"):
        second.pause()
    assert len(client.schedules()) == 0


# --- end to end, with workers -------------------------------------------------------------


def test_a_schedule_the_workers_would_refuse_is_refused_at_once_and_not_stored(
    config, start_workers
):
    # Given a live worker that requires tasks signed with a secret this client lacks
    start_workers(1, worker_env={"YADTQ_SECRET": "schedule-secret"})
    with yadtq.Client(config) as client:
        wait_until(lambda: client.worker_rows(), 30, "the worker's heartbeat")
        # When it makes a schedule, it is refused at once, as a submit is
        with pytest.raises(yadtq.SecretMismatch, match="YADTQ_SECRET"):
            client.schedule("refused", add, every=1, args=(1, 2))
        # Then nothing was stored, so no task fires to fail at every occurrence
        assert client.backend.schedules.names() == []
        assert client.backend.redis.keys(client.backend.keys.task("*")) == []
    # And a client with the workers' secret makes it
    with yadtq.Client(dataclasses.replace(config, secret="schedule-secret")) as signed:
        signed.schedule("accepted", add, every=60, args=(1, 2))
        assert signed.backend.schedules.names() == ["accepted"]


def test_workers_fire_a_one_second_schedule_once_per_occurrence_and_run_it(
    client, start_workers
):
    # Given two workers and a schedule every second
    start_workers(2)
    schedule = client.schedule("every-second", add, every=1, args=(20, 22), overlap="allow")

    # When three occurrences have run
    def done() -> list[dict]:
        rows = schedule.history_rows()
        return [r for r in rows if r["status"] == "success"]
    finished = wait_until(lambda: len(done()) >= 3 and done(), 30, "3 runs of the schedule")

    # Then each was fired once, by a worker, and ran
    occurrences = [r["occurrence"] for r in schedule.history_rows()]
    assert len(occurrences) == len(set(occurrences))
    assert all(r["outcome"] == "fired" and r["fired_by"] for r in finished)
    assert client.get(finished[0]["task_id"]).result(timeout=10) == 42
    # And the workers table counts what each worker fired
    fired_by = {r["fired_by"] for r in finished}
    wait_until(lambda: {w["name"] for w in client.worker_rows() if w["fired"]} >= fired_by,
               10, "the heartbeats to count the firings")
    schedule.remove()


def test_a_task_fired_by_a_worker_that_died_before_producing_it_runs_on_another(
    client, start_workers
):
    # Given a due occurrence fired by a worker that then died (nothing produced it)
    client.schedule("orphan", add, every=3600, args=(3, 4))
    set_next(client, "orphan", client.backend.schedules.now() - 0.5)
    assert ScheduleFirer(client.backend, "doomed").fire_due() == 1
    [row] = client.backend.schedules.history("orphan")

    # When another worker is live
    start_workers(1)

    # Then it sends the waiting task and it runs, once
    assert client.get(row["task_id"]).result(timeout=30) == 7
    assert client.task_record(row["task_id"])["attempt"] == 1


def test_trigger_runs_one_now_and_the_cli_lists_pauses_and_removes(
    client, config, start_workers, tmp_path
):
    start_workers(1)
    schedule = client.schedule("nightly", add, cron="0 2 * * *", args=(2, 2))
    assert schedule.trigger().result(timeout=30) == 4

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("YADTQ_")},
           "YADTQ_HOME": str(tmp_path), "YADTQ_BOOTSTRAP": config.bootstrap,
           "YADTQ_REDIS_URL": config.redis_url, "YADTQ_QUEUE": config.queue,
           "YADTQ_KEY_PREFIX": config.key_prefix}

    def cli(*words: str) -> str:
        done = subprocess.run([sys.executable, "-m", "yadtq", "schedule", *words], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "nightly" in cli("list") and "cron 0 2 * * *" in cli("list")
    assert cli("pause", "nightly").strip() == "paused nightly"
    assert "paused" in cli("list")
    assert cli("resume", "nightly").strip() == "resumed nightly"
    assert cli("trigger", "nightly").startswith("triggered nightly: task")
    assert cli("remove", "nightly").strip() == "removed nightly"
    with pytest.raises(yadtq.ScheduleNotFound):
        schedule.trigger()


def test_a_shipped_function_on_a_schedule_runs_on_trusting_workers_signed_for_each_task(
    config, start_workers
):
    # Given workers that trust code signed with the client's secret
    secret = uuid.uuid4().hex
    start_workers(1, trust_code=True, settings={"secret": secret})
    with yadtq.Client(dataclasses.replace(config, secret=secret)) as client:
        offset = 40

        # When a function defined here (a closure, shipped by value) runs every second
        schedule = client.schedule("shipped", lambda x: x + offset, every=1, args=(2,),
                                   overlap="allow")
        ran = wait_until(lambda: [r for r in schedule.history_rows()
                                  if r["status"] == "success"], 30, "a run of the schedule")

        # Then each fired task passed the workers' signature checks and ran
        assert client.get(ran[0]["task_id"]).result(timeout=10) == 42
        schedule.remove()
