"""Task processes (process mode): groups of short tasks in one round trip, and stopping.

These talk to real task processes started from the fork server, as a worker's
slots do; no broker or Redis is needed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.helpers import wait_until
from yadtq.worker import execution
from yadtq.worker.execution import Call, ProcessRunner


@pytest.fixture
def runner() -> Iterator[ProcessRunner]:
    (made,) = execution.make_runners("process", 1, ["worker_node.tasks"])
    yield made
    made.close()


def test_a_group_runs_in_one_task_process_and_answers_each_call_in_order(runner) -> None:
    pid = runner.pid

    attempts = runner.run_group([Call("add", [1, 2], {}, []), Call("divide", [1, 0], {}, []),
                                 Call("add", [3, 4], {}, [])])

    assert attempts is not None
    assert [a.ok for a in attempts] == [True, False, True]
    assert (attempts[0].value, attempts[2].value) == (3, 7)
    assert attempts[1].error_type == "ZeroDivisionError"
    assert runner.pid == pid  # the same process ran them all


def test_a_group_stopped_midway_answers_none_and_the_runner_serves_on(runner) -> None:
    # Given a group whose second task sleeps for a minute
    pid = runner.pid
    answered: list[list[execution.Attempt] | None] = []
    group = [Call("add", [1, 2], {}, []), Call("sleep", [60], {}, []),
             Call("add", [3, 4], {}, [])]
    running = threading.Thread(target=lambda: answered.append(runner.run_group(group)))
    running.start()

    # When it is stopped while it runs
    wait_until(runner.stop, 30, "the group to be running, to stop it")
    running.join(30)

    # Then it answers None (which tasks ran is unknown) and a fresh process serves on
    assert answered == [None]
    assert runner.pid != pid
    assert runner.run(execution.Call("add", [5, 6], {}, []), None).value == 11
