"""Dependent work end to end (issue 21): futures and batches as arguments, order-only edges,
the failure rules, and workflows that outlive the client that started them. Real workers
on the test's broker and Redis.
"""

from __future__ import annotations

import concurrent.futures

import pytest
from helpers import messages_on_topic, wait_until

import yadtq
from worker_node.tasks import add, check_positive, describe, flaky, needs_file, sleep, total
from yadtq.config import Config
from yadtq.protocol import TaskMessage
from yadtq.worker.rung_copies import RungCopies
from yadtq.workflow_display import workflow_html


def test_a_future_as_an_argument_blocks_the_child_until_its_parent_succeeds(
    client, start_workers
):
    # Given a parent that takes a while, and a child taking its future
    start_workers(1)
    parent = client.submit(sleep, 0.3)
    child = client.submit(add, parent, 1)

    # Then the child waits blocked, naming its parent, and nothing runs it early
    record = client.task_record(child.id)
    assert record["status"] == "blocked" and child.status == "blocked"
    assert record["parents"] == [parent.id]
    # And it runs with the parent's result once the parent succeeded
    assert child.result(timeout=30) == pytest.approx(1.3, abs=0.05)  # sleep returns its time
    assert client.task_record(child.id)["started_at"] >= client.task_record(
        parent.id)["finished_at"]


def test_futures_nested_in_arguments_and_a_batch_as_an_argument_give_their_values(
    client, start_workers
):
    start_workers(2)
    one, two = client.submit(add, 0, 1), client.submit(add, 1, 1)
    batch = client.map(add, [(i, i) for i in range(10)])

    nested = client.submit(describe, {"a": [one, (two,)], "n": 5})
    reduced = client.submit(total, batch)
    mapped = client.map(add, [(one, i) for i in range(3)])

    deep = client.submit(describe, [[[[[[[[one]]]]]]]])  # a future 8 lists deep
    assert nested.result(timeout=30) == "value {'a': [1, [2]], 'n': 5}"
    assert deep.result(timeout=30) == "value [[[[[[[[1]]]]]]]]"
    assert reduced.result(timeout=30) == sum(2 * i for i in range(10))
    assert mapped.results(timeout=30) == [1, 2, 3]


def test_depends_on_orders_work_without_passing_values(client, start_workers, tmp_path):
    # Given a task that writes a file, and one ordered after it that reads the file
    start_workers(2)
    path = tmp_path / "made-by-the-parent"
    writer = client.submit(flaky, str(path), 0)
    readers = client.map(needs_file, [str(path)] * 3, depends_on=[writer])
    single = client.submit_with(needs_file, (str(path),), depends_on=[writer, readers])

    # Then the readers run after the writer, and the single one after all of them
    assert readers.results(timeout=30) == ["run\n"] * 3
    assert single.result(timeout=30) == "run\n"


def test_a_failure_skips_the_branch_below_it_while_other_branches_run_on(
    client, start_workers
):
    # Given a branch under a task that fails, and a branch under one that succeeds
    start_workers(2)
    bad, good = client.submit(check_positive, -1), client.submit(check_positive, 2)
    below = client.submit(add, bad, 1)
    further = client.submit(add, below, 1)
    fine = client.submit(add, good, 1)
    tolerant = client.submit(describe, yadtq.allow_failure(bad))

    # Then the failed branch is skipped transitively, naming the root and its error
    with pytest.raises(yadtq.TaskSkipped) as skipped:
        further.result(timeout=30)
    assert skipped.value.root == bad.id
    assert "check_positive" in str(skipped.value) and "-1 is not positive" in str(skipped.value)
    assert client.status(below.id) == "skipped"
    # And the rest runs: the independent branch, and the child that tolerates failure
    assert fine.result(timeout=30) == 3
    assert tolerant.result(timeout=30) == "error ValueError: -1 is not positive"


def test_a_retried_parent_affects_its_child_only_through_its_final_outcome(
    client, start_workers, tmp_path
):
    # Given a parent that fails once and then succeeds on its retry
    start_workers(1)
    parent = client.submit_with(flaky, (str(tmp_path / "runs"), 1), max_retries=2,
                                retry_backoff=0.05)
    child = client.submit(add, parent, 10)

    # Then the child was not skipped by the failed attempt, and ran with the final value
    assert child.result(timeout=30) == 12


def test_an_unknown_parent_is_refused_with_a_clear_error_and_nothing_is_sent(client, config):
    ghost = yadtq.TaskFuture("ghost-task", "add", client._store)
    before = messages_on_topic(config)

    with pytest.raises(yadtq.UnknownDependency, match="ghost-task.*nothing was submitted"):
        client.submit(add, ghost, 1)
    # Not even from a map whose unknown parent is past its first chunk
    with pytest.raises(yadtq.UnknownDependency, match="ghost-task.*nothing was submitted"):
        client.map(add, [(1, 1)] * 1000 + [(ghost, 1)])
    assert messages_on_topic(config) == before


def test_a_countdown_with_parents_is_refused(client, start_workers):
    parent = client.submit(add, 1, 1)

    with pytest.raises(ValueError, match="cannot also have a countdown"):
        client.submit_with(add, (parent, 1), countdown=5)


def test_work_runs_on_after_the_client_that_submitted_it_is_closed(config: Config,
                                                                    start_workers):
    # Given a chain submitted by a client that then goes away
    start_workers(2)
    with yadtq.Client(config) as gone:
        with gone.workflow("orphan") as workflow:
            head = gone.submit(sleep, 0.2)
            tail = gone.submit(add, gone.submit(add, head, 1), 1)
        workflow_id, tail_id = workflow.id, tail.id

    # When another client re-attaches by id, Then the work finished without the first
    with yadtq.Client(config) as later:
        found = later.get_workflow(workflow_id)
        assert found.name == "orphan"
        assert found.wait(timeout=30)["success"] == 3
        tail = later.get(tail_id)
        assert tail.result(timeout=5) == pytest.approx(2.2, abs=0.05)
        assert workflow_id in [row["id"] for row in later.workflow_rows()]
        # And a task the new client adds below a re-attached one joins its workflow
        more = later.submit(add, tail, 1)
        assert more.workflow.id == workflow_id
        assert found.wait(timeout=30)["success"] == 4


def test_a_workflow_counts_its_tasks_lists_their_parents_and_retries_what_failed(
    client, start_workers, tmp_path
):
    # Given a workflow whose middle step needs a file that is not there yet
    start_workers(2)
    path = tmp_path / "input.txt"
    with client.workflow("pipeline") as workflow:
        load = client.submit(add, 1, 1)
        side = client.submit(add, load, 5)
        step = client.submit(needs_file, str(path))
        after = client.submit_with(describe, (step,), depends_on=[load])
        last = client.submit(describe, after)
    assert side.workflow_id == workflow.id and last.workflow.id == workflow.id

    # When it has run
    counts = workflow.wait(timeout=30)

    # Then the failed step's branch is skipped and the rest succeeded
    assert {k: v for k, v in counts.items() if v} == {
        "total": 5, "success": 2, "failed": 1, "skipped": 2}
    frame = workflow.to_dataframe().set_index("id")
    assert frame.loc[after.id, "parents"] == [step.id, load.id]
    assert frame.loc[last.id, "status"] == "skipped"
    # And its view shows the counts per status and per function
    shown = workflow_html(workflow)
    assert 'data-skipped="2"' in shown and 'data-failed="1"' in shown
    assert "<code>needs_file</code>" in shown and "finished" in shown

    # When the input is fixed and the workflow retried
    path.write_text("fixed")
    assert workflow.retry() == 3
    counts = workflow.wait(timeout=30)

    # Then every task succeeded: the re-run ones on attempt 2, the others untouched
    assert counts["success"] == 5
    frame = workflow.to_dataframe().set_index("id")
    assert frame.loc[last.id, "result"] == "value \"value 'fixed'\""
    assert frame.loc[[step.id, after.id, last.id], "attempt"].tolist() == [2, 2, 2]
    assert frame.loc[[load.id, side.id], "attempt"].tolist() == [1, 1]
    # And the task re-attached by id shows its new outcome, not the one before the retry
    assert client.get(last.id).result(timeout=5) == "value \"value 'fixed'\""


def test_cancelling_a_workflow_cancels_what_has_not_run_and_skips_below_it(
    client, start_workers
):
    start_workers(1)
    with client.workflow("cancelled") as workflow:
        slow = client.submit(sleep, 30)
        children = client.map(add, [(slow, i) for i in range(3)])
    wait_until(lambda: client.status(slow.id) == "processing", 30, "the slow task to start")

    assert workflow.cancel() >= 1

    with pytest.raises(concurrent.futures.CancelledError):
        slow.result(timeout=30)
    counts = workflow.wait(timeout=30)
    assert counts["cancelled"] + counts["skipped"] == 4
    assert all(status in ("cancelled", "skipped")
               for status in workflow.to_dataframe()["status"])
    counts = children.status_counts()  # the batch's counters moved with its tasks
    assert counts["cancelled"] + counts["skipped"] == 3 and counts["success"] == 0


def test_a_retried_attempt_read_in_the_same_poll_as_the_first_attempts_copy_is_kept() -> None:
    # Given attempt 1 of a lone task claimed by doorbell (its Kafka copy not read yet)
    copies = RungCopies()
    copies.claimed("t1", 1)
    first_copy = TaskMessage(id="t1", task="needs_file", attempt=1)
    # When a workflow retry's attempt 2 arrives in the same poll as that copy
    retried = TaskMessage(id="t1", task="needs_file", attempt=2)
    other = TaskMessage(id="t2", task="add")
    kept = copies.without_copies([first_copy, retried, other])

    # Then only the copy is dropped: attempt 2 is new work (notebook 06's retry hung on this)
    assert kept == [retried, other]
    # And a copy is dropped once: read again later, it goes to the claim, which skips it
    assert copies.without_copies([first_copy]) == [first_copy]
