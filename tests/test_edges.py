"""The edges between tasks in Redis (issue 21): written with the child, moved exactly once by
whatever ends a parent, in bounded steps, and repaired when nothing would move them.

These drive the scripts through the backend with no worker, so each step is checked where
it happens: a real Redis-protocol server, no broker needed.
"""

from __future__ import annotations

import json

import pytest

from yadtq import dependencies, protocol
from yadtq.backend import Outcome, RedisBackend
from yadtq.backend.scripts import EDGE_BUDGET
from yadtq.errors import UnknownDependency
from yadtq.futures import TaskFuture
from yadtq.protocol import TaskMessage
from yadtq.status import TaskStatus

WORKER = "worker-a"


def submit(backend: RedisBackend, *parents: str, tolerate: bool = False,
           batch: str | None = None, index: int | None = None) -> TaskMessage:
    """Write one task of ``add`` whose parents are ``parents`` (by id), as a client would."""
    futures = [TaskFuture(parent, "add", None) for parent in parents]  # type: ignore[arg-type]
    found = dependencies.find([], None, [
        dependencies.AllowFailure(f) if tolerate else f for f in futures])
    message = protocol.build("add", [1, 2], batch=batch, index=index)
    backend.enqueue([message], edges=[found.spec] if parents else None)
    return message


def run(backend: RedisBackend, message: TaskMessage, status: TaskStatus = TaskStatus.SUCCESS,
        worker: str = WORKER) -> list[str]:
    """Claim and end ``message``; returns the children its outcome readied."""
    [claim] = backend.claim_many([message], worker)
    assert claim.claimed, claim.skipped_because
    outcome = Outcome(message.id, message.batch, claim.attempt or 1, status, result=7,
                      error_type="" if status is TaskStatus.SUCCESS else "ValueError",
                      error="" if status is TaskStatus.SUCCESS else "bad input")
    stored = backend.finish_many([outcome], worker)
    assert stored.refusals == [None]
    return stored.readied


def field(backend: RedisBackend, task_id: str, name: str) -> str | None:
    value = backend.redis.hget(backend.keys.task(task_id), name)
    return value.decode() if value is not None else None


def test_a_child_waits_blocked_on_each_parent_and_is_readied_by_the_last_one(
    backend: RedisBackend
) -> None:
    # Given two parents and a child of both
    first, second = submit(backend), submit(backend)
    child = submit(backend, first.id, second.id)
    assert field(backend, child.id, "status") == "blocked"
    assert field(backend, child.id, "waiting") == "2"
    assert backend.redis.zscore(backend.keys.blocked, child.id) is not None

    # When the first parent succeeds, Then the child still waits on the other
    assert run(backend, first) == []
    assert (field(backend, child.id, "status"), field(backend, child.id, "waiting")) == (
        "blocked", "1")

    # When the second succeeds, Then that outcome's script readies the child, held for the
    # worker that stored it to produce
    assert run(backend, second) == [child.id]
    assert field(backend, child.id, "status") == "queued"
    assert backend.redis.zscore(backend.keys.blocked, child.id) is None
    assert backend.redis.zscore(backend.keys.unblocked, child.id) is not None
    [message] = backend.unblocked.messages([child.id])
    assert (message.id, message.args) == (child.id, (1, 2))


def test_a_replayed_outcome_cannot_count_an_edge_twice(backend: RedisBackend) -> None:
    # Given a child of two parents, the first of which succeeded
    first, second = submit(backend), submit(backend)
    child = submit(backend, first.id, second.id)
    run(backend, first)

    # When the first's outcome is stored again (a duplicate, or a stale worker's)
    replay = backend.finish_many([Outcome(first.id, None, 1, TaskStatus.SUCCESS, result=7)],
                                 WORKER)

    # Then it is refused, and the child still waits on the second parent
    assert replay.refusals[0] is not None and replay.readied == []
    assert (field(backend, child.id, "status"), field(backend, child.id, "waiting")) == (
        "blocked", "1")


def test_a_failed_parent_skips_its_subtree_transitively_and_nothing_else(
    backend: RedisBackend
) -> None:
    # Given a root with a three-level subtree, and an independent task beside it
    root, other = submit(backend), submit(backend)
    level1 = submit(backend, root.id)
    level2 = [submit(backend, level1.id) for _ in range(2)]
    level3 = submit(backend, level2[0].id, other.id)

    # When the root fails for good
    run(backend, root, TaskStatus.FAILED)

    # Then every task below it is skipped, with an error naming the root and its error
    for task in (level1, *level2, level3):
        assert field(backend, task.id, "status") == "skipped"
        assert field(backend, task.id, "root") == root.id
        assert f"task {root.id} (add) failed: ValueError: bad input" in (
            field(backend, task.id, "error") or "")
    # And the independent task was untouched, and still runs
    assert field(backend, other.id, "status") == "queued"
    run(backend, other)
    assert field(backend, level3.id, "status") == "skipped"


def test_an_edge_that_tolerates_failure_readies_its_child_when_the_parent_fails(
    backend: RedisBackend
) -> None:
    parent = submit(backend)
    child = submit(backend, parent.id, tolerate=True)

    assert run(backend, parent, TaskStatus.FAILED) == [child.id]
    assert field(backend, child.id, "status") == "queued"


def test_a_retrying_parent_changes_nothing_until_its_outcome_is_final(
    backend: RedisBackend
) -> None:
    # Given a child of a parent whose first attempt fails and will be retried
    parent = submit(backend)
    child = submit(backend, parent.id)
    [claim] = backend.claim_many([parent], WORKER)
    retry = Outcome(parent.id, None, claim.attempt or 1, TaskStatus.FAILED, error_type="E",
                    error="flaky", retry_at=10**10)

    # When that attempt is stored, Then the child still waits
    assert backend.finish_many([retry], WORKER).readied == []
    assert field(backend, child.id, "status") == "blocked"


def test_a_child_of_a_finished_parent_starts_queued_or_skipped_in_the_submitting_step(
    backend: RedisBackend
) -> None:
    good, bad = submit(backend), submit(backend)
    run(backend, good)
    run(backend, bad, TaskStatus.FAILED)

    assert field(backend, submit(backend, good.id).id, "status") == "queued"
    skipped = submit(backend, good.id, bad.id)
    assert field(backend, skipped.id, "status") == "skipped"
    assert field(backend, skipped.id, "root") == bad.id


def test_an_unknown_parent_refuses_the_submit_and_writes_nothing(backend: RedisBackend) -> None:
    known = submit(backend)
    message = protocol.build("add", [1, 2])
    spec = json.dumps({"p": [known.id, "no-such-task"], "t": []})

    with pytest.raises(UnknownDependency, match="no-such-task"):
        backend.enqueue([message], edges=[spec])

    assert not backend.redis.exists(backend.keys.task(message.id))
    assert not backend.redis.exists(backend.keys.children(known.id))


def test_cancelling_a_parent_skips_its_children_and_a_cancelled_child_is_left_alone(
    backend: RedisBackend
) -> None:
    parent, other = submit(backend), submit(backend)
    child = submit(backend, parent.id)
    cancelled_child = submit(backend, other.id)

    assert backend.cancel(parent.id, None, requested_by="test") == "queued"
    assert backend.cancel(cancelled_child.id, None, requested_by="test") == "blocked"
    assert run(backend, other) == []

    assert field(backend, child.id, "status") == "skipped"
    assert field(backend, cancelled_child.id, "status") == "cancelled"


def test_a_parents_record_is_kept_while_a_child_may_still_read_it(backend: RedisBackend) -> None:
    # Given a child of two parents
    first, second = submit(backend), submit(backend)
    child = submit(backend, first.id, second.id)

    # When the first finishes, Then its record does not expire while the child waits
    run(backend, first)
    assert backend.redis.ttl(backend.keys.task(first.id)) == -1

    # When the child has run, Then both parents' records expire as usual
    run(backend, second)
    run(backend, child)
    assert backend.redis.ttl(backend.keys.task(first.id)) > 0
    assert backend.redis.ttl(backend.keys.task(second.id)) > 0


def test_a_wide_fan_out_moves_in_bounded_steps_and_every_child_once(
    backend: RedisBackend
) -> None:
    # Given one parent with more children than one step moves
    parent = submit(backend)
    count = 2 * EDGE_BUDGET + 200
    batch = protocol.new_batch_id()
    spec = json.dumps({"p": [parent.id], "t": []})
    children = [protocol.build("add", [i, 1], batch=batch, index=i) for i in range(count)]
    backend.enqueue(children, batch_id=batch, batch_total=count, edges=[spec] * count)
    assert backend.batch_counts(batch)["blocked"] == count

    # When the parent succeeds, Then its script moves one step's worth and leaves the rest
    readied = run(backend, parent)
    assert len(readied) == EDGE_BUDGET
    assert backend.redis.zscore(backend.keys.settling, parent.id) is not None

    # And settle.lua, run by any worker, moves the rest in steps of the same size
    steps = [backend.edges.settle() for _ in range(3)]
    assert [len(step) for step in steps] == [EDGE_BUDGET, 200, 0]
    everyone = readied + [i for step in steps for i in step]
    assert sorted(everyone) == sorted(m.id for m in children)
    assert backend.redis.zscore(backend.keys.settling, parent.id) is None
    counts = backend.batch_counts(batch)
    assert (counts["blocked"], counts["queued"]) == (0, count)


def test_repair_moves_a_blocked_task_whose_parents_ended_without_moving_it(
    backend: RedisBackend
) -> None:
    # Given a child whose edge was lost: its parent ended, but never heard of it
    parent, healthy_parent = submit(backend), submit(backend)
    child = submit(backend, parent.id)
    waiting = submit(backend, healthy_parent.id)
    backend.redis.hdel(backend.keys.children(parent.id), child.id)
    run(backend, parent)
    assert field(backend, child.id, "status") == "blocked"

    # When a worker's periodic repair looks, Then it moves the stuck child (and only it)
    assert backend.edges.repair() == [child.id]
    assert field(backend, child.id, "status") == "queued"
    assert backend.redis.zscore(backend.keys.unblocked, child.id) is not None
    assert field(backend, waiting.id, "status") == "blocked"
    assert backend.edges.repair() == []
