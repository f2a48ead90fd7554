"""Lone tasks claimed from their records need no Kafka message (yadtq/waking.py): a client
waits a moment for a rung worker's claim before it produces one, its record guarded in the
unsent set meanwhile (yadtq/backend/due_sets.py, Unsent) so that a worker produces it should
the client die first. Against a real broker, Redis and worker processes."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import messages_on_topic

import yadtq
from worker_node.tasks import add
from yadtq import protocol, waking
from yadtq.backend import RedisBackend
from yadtq.config import Config

WORKER = "worker-a"


def guarded(backend: RedisBackend, *args: int) -> protocol.TaskMessage:
    """A lone ``add`` written queued and guarded, as a client writes it before it waits for
    a claim (no doorbell rung, nothing produced)."""
    message = protocol.build("add", list(args))
    backend.enqueue([message], unsent=True)
    return message


def is_guarded(backend: RedisBackend, task_id: str) -> tuple[bool, bool]:
    """Whether the task has its ``unsent`` mark, and an entry in the unsent set."""
    return (bool(backend.redis.hexists(backend.keys.task(task_id), "unsent")),
            backend.redis.zscore(backend.keys.unsent, task_id) is not None)


# --- the scripts ------------------------------------------------------------------------


def test_a_claim_from_the_record_forgets_the_guard_and_says_no_copy_will_come(
        backend: RedisBackend) -> None:
    # Given a guarded lone task, and an unguarded one (a map's, or produced at once)
    lone = guarded(backend, 1, 2)
    produced = protocol.build("add", [3, 4])
    backend.enqueue([produced])
    assert is_guarded(backend, lone.id) == (True, True)

    # When a worker claims each from its record
    task, claim, _, copied = backend.record_claims.named(lone.id, WORKER, ["add"])
    _, _, _, produced_copied = backend.record_claims.named(produced.id, WORKER, ["add"])

    # Then the guarded one is claimed with no copy to wait for, its guard gone; the other's
    # message will come and is a copy
    assert task is not None and claim.claimed and copied is False
    assert produced_copied is True
    assert is_guarded(backend, lone.id) == (False, False)
    # and its client, deciding too late, does not produce it
    assert backend.unsent.producing(lone.id) is False


def test_a_client_that_waited_in_vain_forgets_the_guard_before_it_produces(
        backend: RedisBackend) -> None:
    # Given a guarded lone task no worker claimed
    lone = guarded(backend, 5, 6)

    # When its client gives up waiting
    produce = backend.unsent.producing(lone.id)

    # Then it is to be produced, and no worker will produce it as well
    assert produce is True
    assert is_guarded(backend, lone.id) == (False, False)
    assert backend.unsent.take_due(limit=10) == []


# --- clients and workers ---------------------------------------------------------------


def test_a_lone_task_a_worker_claims_from_its_record_is_never_produced(
        client: yadtq.Client, config: Config, start_workers: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a worker, and a client that waits for its claim as long as any machine needs
    monkeypatch.setattr(waking, "LONE_CLAIM_WAIT", 30.0)
    start_workers(1)
    client.wait_for_workers(1, timeout=60)
    before = messages_on_topic(config)

    # When a lone task is submitted
    future = client.submit(add, 2, 3)

    # Then it ran, claimed from its record, and no message of it reached Kafka
    assert future.result(timeout=30) == 5
    assert messages_on_topic(config) == before
    assert is_guarded(client.backend, future.id) == (False, False)


def test_a_lone_task_no_worker_claims_is_produced_after_the_wait_and_the_next_at_once(
        client: yadtq.Client, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no worker, and a client noting which of its submits wait for a claim
    waited: list[bool] = []
    enqueue = client.backend.enqueue

    def noting(messages: Any, *args: Any, unsent: bool = False, **options: Any) -> Any:
        waited.append(unsent)
        return enqueue(messages, *args, unsent=unsent, **options)

    monkeypatch.setattr(client.backend, "enqueue", noting)
    before = messages_on_topic(config)

    # When two lone tasks are submitted, one after the other
    first = client.submit(add, 1, 1)
    client.submit(add, 2, 2)

    # Then the first waited in vain and was produced, unguarded; the second did not wait
    assert waited == [True, False]
    assert messages_on_topic(config) == before + 2
    assert first.status == "queued"
    assert is_guarded(client.backend, first.id) == (False, False)


def test_a_lone_task_whose_client_died_before_producing_it_is_produced_by_a_worker(
        client: yadtq.Client, start_workers: Any) -> None:
    # Given a guarded lone task whose client died before it produced it, its grace over
    backend = client.backend
    lone = guarded(backend, 20, 22)
    backend.redis.zadd(backend.keys.unsent, {lone.id: 0})

    # When a worker starts
    start_workers(1)

    # Then a worker produced it, and it ran
    assert client.get(lone.id).result(timeout=60) == 42
    assert backend.redis.zcard(backend.keys.unsent) == 0
