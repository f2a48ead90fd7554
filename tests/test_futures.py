"""Futures and batches, resolved by real Redis events, with no worker processes.

The client produces to the real broker, but nothing consumes: the worker side is
simulated by calling ``client.backend.claim_many`` and ``finish`` directly, which
run the real Lua scripts and publish the real events the client listens to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from helpers import wait_until
from kafka import KafkaConsumer, TopicPartition

import yadtq
from yadtq import protocol
from yadtq.backend import Outcome, RedisBackend
from yadtq.batch import DATAFRAME_COLUMNS
from yadtq.config import Config
from yadtq.futures import TaskFuture
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus
from yadtq.store import RedisTaskStore

WORKER = "sim-worker"
TIMEOUT = 10.0


def message_of(future: TaskFuture) -> TaskMessage:
    """The message a worker would have consumed for ``future``."""
    return TaskMessage(id=future.id, task=future.task, args=future.args, kwargs=future.kwargs,
                       batch=future.batch, index=future.index)


def claim(client: yadtq.Client, *futures: TaskFuture) -> list[int]:
    """Claim the futures' tasks as WORKER; returns their attempts."""
    claims = client.backend.claim_many([message_of(f) for f in futures], WORKER)
    assert all(c.claimed for c in claims), claims
    return [c.attempt for c in claims if c.attempt is not None]


def succeed(client: yadtq.Client, future: TaskFuture, result: Any, attempt: int = 1) -> None:
    outcome = Outcome(future.id, future.batch, attempt, TaskStatus.SUCCESS, result=result)
    assert client.backend.finish(outcome, WORKER) is None


def run(client: yadtq.Client, future: TaskFuture, result: Any) -> None:
    """Claim and finish one task, as a worker would."""
    [attempt] = claim(client, future)
    succeed(client, future, result, attempt)


def task_keys(client: yadtq.Client, config: Config) -> list[bytes]:
    return client.backend.redis.keys(config.key_prefix + ":*")


def messages_on_topic(config: Config) -> int:
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap)
    try:
        partitions = [TopicPartition(config.tasks_topic, p) for p in range(config.partitions)]
        return sum(consumer.end_offsets(partitions).values())
    finally:
        consumer.close()


# --- one future's life ---------------------------------------------------------------


def test_submitted_future_goes_queued_then_running_then_done(client: yadtq.Client) -> None:
    from worker_node.tasks import add

    # Given a submitted task no worker has taken
    future = client.submit(add, 1, 2)
    assert isinstance(future, concurrent.futures.Future)
    assert future.status == TaskStatus.QUEUED
    assert not future.running() and not future.done()
    assert client.status(future.id) == "queued"
    assert future.task == "add" and future.args == (1, 2)

    # When a worker claims it, then the future is running on that worker
    [attempt] = claim(client, future)
    wait_until(future.running, TIMEOUT, "the future to be running after the claim")
    assert future.status == TaskStatus.PROCESSING
    assert future.worker == WORKER
    assert not future.done()
    assert repr(future) == f"<TaskFuture {future.id} add processing on {WORKER}>"

    # When the worker reports success, then the future holds the result
    succeed(client, future, 3, attempt)
    assert future.result(timeout=TIMEOUT) == 3
    assert future.done()
    assert future.exception() is None
    assert future.status == TaskStatus.SUCCESS
    assert client.status(future.id) == "success"


def test_failed_task_raises_task_failed_with_the_remote_error(client: yadtq.Client) -> None:
    future = client.submit("divide", 1, 0)
    [attempt] = claim(client, future)

    client.backend.finish(
        Outcome(future.id, None, attempt, TaskStatus.FAILED, error_type="ZeroDivisionError",
                error="division by zero",
                traceback='Traceback (most recent call last):\n  File "tasks.py"\n'),
        WORKER,
    )

    with pytest.raises(yadtq.TaskFailed) as caught:
        future.result(timeout=TIMEOUT)
    failure = caught.value
    assert failure.task_id == future.id
    assert failure.error_type == "ZeroDivisionError"
    assert failure.message == "division by zero"
    assert failure.traceback.startswith("Traceback")
    assert "ZeroDivisionError: division by zero" in str(failure)
    assert "Remote traceback" in str(failure)
    assert future.exception() is failure
    assert future.status == TaskStatus.FAILED


def test_result_with_a_short_timeout_raises_timeout_error_naming_the_status(
    client: yadtq.Client,
) -> None:
    future = client.submit("add", 1, 2)

    with pytest.raises(TimeoutError, match=r"still queued after 0\.2 s"):
        future.result(timeout=0.2)

    claim(client, future)
    wait_until(future.running, TIMEOUT, "the future to be running")
    with pytest.raises(TimeoutError, match="still processing"):
        future.result(timeout=0.2)


def test_result_timeout_on_a_queue_no_worker_serves_says_so(client: yadtq.Client) -> None:
    # Given a task on a queue no worker has ever served
    future = client.submit("add", 1, 2)

    # When waiting for its result times out
    with pytest.raises(TimeoutError) as caught:
        future.result(timeout=1)

    # Then the error names the queue, says no worker serves it and how to start one
    message = str(caught.value)
    assert "still queued after 1 s" in message
    assert f"no live worker serves queue {client.config.queue!r}" in message
    assert "none has sent a heartbeat" in message
    assert f"python -m worker_node --queue {client.config.queue}" in message


def test_batch_results_timeout_counts_the_dead_workers_of_a_queue_with_no_live_one(
    client: yadtq.Client,
) -> None:
    # Given a batch on a queue whose only worker stopped sending heartbeats an hour ago
    client.backend.heartbeat(WORKER, {"host": "h", "pid": 1}, [], now=time.time() - 3600)
    batch = client.map("add", [(1, 2), (3, 4)])

    # When waiting for its results times out
    with pytest.raises(TimeoutError) as caught:
        batch.results(timeout=1)

    # Then the error says no live worker serves the queue, and that one is dead
    assert "2 (of 2) tasks" in str(caught.value)
    assert f"no live worker serves queue {client.config.queue!r} (1 dead)" in str(caught.value)


def test_exception_timeout_with_a_live_worker_blames_no_missing_worker(
    client: yadtq.Client,
) -> None:
    # Given a worker of the queue that is alive but has not taken the task
    client.backend.heartbeat(WORKER, {"host": "h", "pid": 1}, [], now=time.time())
    future = client.submit("add", 1, 2)

    # When waiting for its result times out, then the error blames no missing worker
    with pytest.raises(TimeoutError) as caught:
        future.exception(timeout=0.5)
    assert "still queued after 0.5 s" in str(caught.value)
    assert "no live worker" not in str(caught.value)


def test_result_timeout_while_redis_is_unreachable_is_still_a_plain_timeout(
    config: Config,
) -> None:
    # Given a future whose store's Redis has become unreachable
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gone = RedisBackend(dataclasses.replace(config, redis_url=f"redis://127.0.0.1:{port}/0",
                                            connect_timeout=1.0))
    future = TaskFuture(protocol.new_task_id(), "add", RedisTaskStore(gone))
    try:
        # When waiting for its result times out
        with pytest.raises(TimeoutError) as caught:
            future.result(timeout=0.2)
    finally:
        gone.close()

    # Then the timeout is raised as it is, without a hint Redis could not give
    assert str(caught.value).endswith("still queued after 0.2 s")


def test_cancel_of_a_queued_task_cancels_it_in_redis_and_the_future(
    client: yadtq.Client,
) -> None:
    # Given a task no worker has claimed
    future = client.submit("add", 1, 2)

    # When it is cancelled
    assert future.cancel() is True

    # Then the future is cancelled and Redis says so too, so a worker will skip it
    assert future.cancelled()
    assert future.done()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=TIMEOUT)
    assert client.status(future.id) == TaskStatus.CANCELLED
    [claim_after] = client.backend.claim_many([message_of(future)], WORKER)
    assert not claim_after.claimed and claim_after.skipped_because == "cancelled"


def test_cancel_of_a_finished_task_is_refused_and_keeps_its_result(
    client: yadtq.Client,
) -> None:
    future = client.submit("add", 1, 2)
    run(client, future, 3)
    assert future.result(timeout=TIMEOUT) == 3

    assert future.cancel() is False
    assert client.cancel(future.id) is False
    assert not future.cancelled()
    assert client.status(future.id) == TaskStatus.SUCCESS
    assert future.result(timeout=1) == 3


# --- the concurrent.futures and asyncio protocols --------------------------------------


def test_wait_and_as_completed_follow_the_order_tasks_finish_in(client: yadtq.Client) -> None:
    first, second, third = client.map("add", [(0, 0), (1, 1), (2, 2)])
    claim(client, first, second, third)

    # When only the second finishes, then wait(FIRST_COMPLETED) returns it alone
    succeed(client, second, 2)
    done, pending = concurrent.futures.wait(
        [first, second, third], timeout=TIMEOUT, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert done == {second} and pending == {first, third}

    # And as_completed yields the futures in the order their tasks finish
    completed = concurrent.futures.as_completed([first, second, third], timeout=TIMEOUT)
    assert next(completed) is second
    succeed(client, third, 4)
    assert next(completed) is third
    succeed(client, first, 0)
    assert next(completed) is first

    done, pending = concurrent.futures.wait([first, second, third], timeout=TIMEOUT)
    assert len(done) == 3 and not pending


def test_batch_finished_names_the_finished_indices_at_once(
    client: yadtq.Client,
) -> None:
    batch = client.map("add", [(0, 0), (1, 1), (2, 2), (3, 3)])
    assert batch.finished() == []
    first, _, third, _ = list(batch)
    claim(client, first, third)

    # When the first and third finish, finished() names them as soon as the events arrive
    succeed(client, third, 4)
    succeed(client, first, 0)

    wait_until(lambda: batch.finished() == [0, 2], TIMEOUT, "the finished indices")
    assert not batch.done()


def test_done_callback_fires_when_the_task_finishes_and_at_once_when_already_done(
    client: yadtq.Client,
) -> None:
    future = client.submit("add", 1, 2)
    called = threading.Event()
    seen: list[TaskFuture] = []

    def on_done(finished: concurrent.futures.Future) -> None:
        seen.append(finished)  # type: ignore[arg-type]
        called.set()

    future.add_done_callback(on_done)
    assert not called.is_set()
    run(client, future, 3)
    assert called.wait(TIMEOUT), "done callback did not fire"
    assert seen == [future]

    late: list[Any] = []
    future.add_done_callback(lambda f: late.append(f.result()))
    assert late == [3]


def test_change_callback_sees_each_status(client: yadtq.Client) -> None:
    future = client.submit("add", 1, 2)
    statuses: list[str] = []
    future.add_change_callback(lambda f: statuses.append(f.status.value))

    run(client, future, 3)
    future.result(timeout=TIMEOUT)

    assert statuses == ["processing", "success"]


def test_future_can_be_awaited_in_asyncio(client: yadtq.Client) -> None:
    future = client.submit("add", 2, 3)

    async def main() -> Any:
        waiting = asyncio.ensure_future(asyncio.wait_for(_await(future), TIMEOUT))
        await asyncio.to_thread(run, client, future, 5)
        return await waiting

    assert asyncio.run(main()) == 5


async def _await(future: TaskFuture) -> Any:
    return await future


def test_awaiting_a_failed_future_raises_task_failed(client: yadtq.Client) -> None:
    future = client.submit("divide", 1, 0)
    [attempt] = claim(client, future)
    client.backend.finish(Outcome(future.id, None, attempt, TaskStatus.FAILED,
                                  error_type="ZeroDivisionError", error="boom"), WORKER)

    with pytest.raises(yadtq.TaskFailed, match="boom"):
        asyncio.run(asyncio.wait_for(_await(future), TIMEOUT))


# --- re-attaching by id -----------------------------------------------------------------


def enqueue_elsewhere(client: yadtq.Client, count: int = 1,
                      batch_id: str | None = None) -> list[TaskMessage]:
    """Task records written by another client (e.g. before a kernel restart)."""
    messages = [protocol.build("add", [i, i], batch=batch_id, index=i if batch_id else None)
                for i in range(count)]
    client.backend.enqueue(messages, batch_id=batch_id, batch_total=len(messages))
    return messages


def test_get_reattaches_to_a_finished_task(client: yadtq.Client) -> None:
    [message] = enqueue_elsewhere(client)
    [attempt] = [c.attempt for c in client.backend.claim_many([message], WORKER)]
    assert client.backend.finish(
        Outcome(message.id, None, attempt, TaskStatus.SUCCESS, result=0), WORKER
    ) is None

    future = client.get(message.id)

    assert future.done()
    assert future.result(timeout=0) == 0
    assert future.task == "add"
    assert future.args == (0, 0)
    assert future.worker == WORKER


def test_get_reattaches_to_an_unfinished_task_and_resolves_on_its_finish_event(
    client: yadtq.Client,
) -> None:
    # Given a task another client submitted, already running
    [message] = enqueue_elsewhere(client)
    [claimed] = client.backend.claim_many([message], WORKER)

    # When this client re-attaches to it
    future = client.get(message.id)

    # Then it reflects the current state, and resolves when the task finishes
    assert future.running()
    assert future.status == TaskStatus.PROCESSING
    assert future.worker == WORKER
    assert not future.done()
    assert client.backend.finish(
        Outcome(message.id, None, claimed.attempt or 0, TaskStatus.SUCCESS, result=0), WORKER
    ) is None
    assert future.result(timeout=TIMEOUT) == 0


def test_reattaching_in_the_same_client_keeps_the_original_future_resolving(
    client: yadtq.Client,
) -> None:
    original = client.submit("add", 1, 2)
    again = client.get(original.id)

    run(client, original, 3)

    assert again.result(timeout=TIMEOUT) == 3
    assert original.result(timeout=1) == 3


def test_get_batch_reattaches_a_map_batch_in_order_with_current_states(
    client: yadtq.Client,
) -> None:
    # Given a batch of three from another client: one finished, one running, one queued
    batch_id = protocol.new_batch_id()
    done_message, running_message, queued_message = enqueue_elsewhere(client, 3, batch_id)
    client.backend.claim_many([done_message, running_message], WORKER)
    assert client.backend.finish(
        Outcome(done_message.id, batch_id, 1, TaskStatus.SUCCESS, result=0), WORKER
    ) is None

    # When this client re-attaches to the batch
    batch = client.get_batch(batch_id)

    # Then the futures are in submission order and show the current states
    assert batch.id == batch_id
    assert [f.id for f in batch] == [done_message.id, running_message.id, queued_message.id]
    assert [f.index for f in batch] == [0, 1, 2]
    assert [f.status.value for f in batch] == ["success", "processing", "queued"]
    assert batch.status_counts() == {"total": 3, "blocked": 0, "scheduled": 0, "queued": 1,
                                     "processing": 1, "success": 1, "failed": 0,
                                     "cancelled": 0, "skipped": 0}
    # And the rest resolve from events
    succeed(client, batch[1], 2)
    run(client, batch[2], 4)
    assert batch.results(timeout=TIMEOUT) == [0, 2, 4]
    assert batch.done()


def test_unknown_ids_raise_task_not_found(client: yadtq.Client) -> None:
    with pytest.raises(yadtq.TaskNotFound, match="no task 'nope'"):
        client.status("nope")
    with pytest.raises(yadtq.TaskNotFound):
        client.get("nope")
    with pytest.raises(yadtq.TaskNotFound, match="no batch"):
        client.get_batch("b-nope")


# --- map -----------------------------------------------------------------------------


def test_map_with_a_non_json_item_names_the_item_and_sends_nothing(
    client: yadtq.Client, config: Config
) -> None:
    with pytest.raises(TypeError) as caught:
        client.map("add", [(1, 2), (3, {4}), (5, 6)])

    assert "item 1 of map" in str(caught.value)
    assert "argument 1" in str(caught.value)
    assert client.backend.redis.keys(config.key_prefix + ":task:*") == []
    assert task_keys(client, config) == []
    assert messages_on_topic(config) == 0


def test_map_items_are_recorded_as_args_and_kwargs(client: yadtq.Client) -> None:
    # Given items of each shape: a tuple is star-args, a dict is kwargs, else one argument
    items = [(1, 2), {"a": 1, "b": 2}, 5, [1, 2], "text", (), None]

    batch = client.map("add", items)

    expected = [([1, 2], {}), ([], {"a": 1, "b": 2}), ([5], {}), ([[1, 2]], {}),
                (["text"], {}), ([], {}), ([None], {})]
    records = client.backend.task_records([f.id for f in batch])
    assert [(r["args"], r["kwargs"]) for r in records] == expected
    assert [(list(f.args), f.kwargs) for f in batch] == expected
    assert [r["batch"] for r in records] == [batch.id] * len(items)
    assert [r["index"] for r in records] == list(range(len(items)))


def test_map_accepts_a_generator_and_keeps_submission_order(client: yadtq.Client) -> None:
    batch = client.map("add", ((i, i) for i in range(5)))

    assert [f.index for f in batch] == list(range(5))
    assert client.backend.batch_task_ids(batch.id) == [f.id for f in batch]
    assert batch.status_counts()["total"] == 5


def test_dataframe_has_one_row_per_task_with_current_statuses_mid_run(
    client: yadtq.Client,
) -> None:
    # Given a batch where one task finished, one is running and one is queued
    batch = client.map("add", [(1, 2), (3, 4), (5, 6)])
    run(client, batch[0], 3)
    claim(client, batch[1])
    batch[0].result(timeout=TIMEOUT)

    # When it is shown as a table
    frame = batch.to_dataframe()

    # Then each row shows that task as Redis holds it now
    assert list(frame.columns) == DATAFRAME_COLUMNS
    assert list(frame["id"]) == [f.id for f in batch]
    assert list(frame["index"]) == [0, 1, 2]
    assert list(frame["status"]) == ["success", "processing", "queued"]
    assert frame["result"].iloc[0] == 3
    assert frame["result"].iloc[1:].isna().all()
    assert list(frame["worker"].iloc[:2]) == [WORKER, WORKER]
    assert frame["worker"].isna().iloc[2]
    assert list(frame["args"]) == [(1, 2), (3, 4), (5, 6)]
    assert frame["duration"].iloc[0] >= 0
    assert frame["duration"].iloc[1:].isna().all()
    assert frame["finished_at"].iloc[1:].isna().all()
    assert str(frame["queued_at"].dtype).startswith("datetime64")


def test_failed_row_shows_the_error_type_and_message(client: yadtq.Client) -> None:
    batch = client.map("divide", [(1, 0)])
    [attempt] = claim(client, batch[0])
    client.backend.finish(Outcome(batch[0].id, batch.id, attempt, TaskStatus.FAILED,
                                  error_type="ZeroDivisionError", error="division by zero"),
                          WORKER)
    with pytest.raises(yadtq.TaskFailed):
        batch.results(timeout=TIMEOUT)

    frame = batch.to_dataframe()

    assert frame["status"].iloc[0] == "failed"
    assert frame["error"].iloc[0] == "ZeroDivisionError: division by zero"


def test_many_pending_futures_share_one_subscription_and_all_resolve(
    client: yadtq.Client,
) -> None:
    # Given 2,000 pending futures and one more single submission
    batch = client.map("add", [(i, i) for i in range(2000)])
    single = client.submit("add", 1, 1)
    channel = client.backend.keys.events

    # Then the client holds exactly one subscription to the events channel
    assert client.backend.redis.pubsub_numsub(channel) == [(channel.encode(), 1)]

    # And every future resolves from that one subscription
    futures: Sequence[TaskFuture] = [*batch, single]
    claims = client.backend.claim_many([message_of(f) for f in futures], WORKER)
    for future, claimed in zip(futures, claims, strict=True):
        assert claimed.attempt is not None
        succeed(client, future, 2 * future.args[0], claimed.attempt)
    assert batch.results(timeout=TIMEOUT) == [2 * i for i in range(2000)]
    assert single.result(timeout=TIMEOUT) == 2
    assert batch.status_counts()["success"] == 2000
