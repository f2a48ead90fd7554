"""The client host of tests/test_multihost.py: a yadtq client driven over stdin/stdout.

The multi-host test runs this script inside the ``client`` network namespace it
built, where the hub's broker and Redis are reachable and nothing else is. Each
request is one JSON line on stdin, each answer one JSON line on stdout
(``{"error": ...}`` when the request raised); logs go to stderr. Every wait has
a deadline given by the request.

Requests (``op``):

- ``workers``: wait until ``count`` live workers share every partition; the workers table.
- ``run``: map ``sleep(seconds)`` over ``count`` items and wait; every task's row.
- ``submit``: map ``sleep(seconds)`` over ``count`` items; the batch id, at once.
- ``wait_midway``: wait until ``min_done`` tasks of a batch finished while ``worker``
  is running some; the ids it runs.
- ``collect``: wait for a batch; every task's row, the history of re-run tasks, the
  Redis batch counters and the workers table.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import time
import traceback
from typing import Any

import yadtq
from worker_node.tasks import sleep
from yadtq.batch import TaskBatch
from yadtq.config import Config
from yadtq.errors import ConnectionFailed
from yadtq.status import TaskStatus

ROW_COLUMNS = ["id", "index", "status", "result", "worker", "attempt", "started_at",
               "finished_at"]


def connect(config: Config, timeout: float) -> yadtq.Client:
    """A client, once the hub's Redis and broker answer (they may still be starting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return yadtq.Client(config)
        except ConnectionFailed as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the hub did not answer within {timeout} s: {exc}") from None
            time.sleep(0.2)


def rows(batch: TaskBatch) -> list[dict[str, Any]]:
    """Every task of the batch as plain data, times as Unix seconds."""
    frame = batch.to_dataframe()
    for column in ("started_at", "finished_at"):
        frame[column] = [t.timestamp() if t == t else None for t in frame[column]]
    return json.loads(frame[ROW_COLUMNS].to_json(orient="records"))


def workers(client: yadtq.Client) -> list[dict[str, Any]]:
    frame = client.workers()[["name", "host", "status", "partitions", "heartbeat_age"]]
    return json.loads(frame.to_json(orient="records"))


class Session:
    """The client host's state between requests: one client, the batches it submitted."""

    def __init__(self, client: yadtq.Client) -> None:
        self.client = client
        self.batches: dict[str, TaskBatch] = {}

    def op_workers(self, count: int, timeout: float) -> dict[str, Any]:
        self.client.wait_for_workers(count, timeout=timeout)
        return {"workers": workers(self.client)}

    def op_run(self, seconds: float, count: int, timeout: float) -> dict[str, Any]:
        batch = self.client.map(sleep, [seconds] * count)
        results = batch.results(timeout=timeout)
        return {"batch": batch.id, "results": results, "rows": rows(batch)}

    def op_submit(self, seconds: float, count: int) -> dict[str, Any]:
        batch = self.client.map(sleep, [seconds] * count)
        self.batches[batch.id] = batch
        return {"batch": batch.id, "submitted_at": time.time()}

    def op_wait_midway(
        self, batch: str, worker: str, min_done: int, timeout: float
    ) -> dict[str, Any]:
        tasks = self.batches[batch]
        deadline = time.monotonic() + timeout
        while True:
            done = tasks.snapshot()["done"]
            running = [f.id for f in tasks
                       if f.status is TaskStatus.PROCESSING and f.worker == worker]
            if done >= min_done and running:
                return {"done": done, "running": running, "at": time.time()}
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout} s: {done} done, {worker} runs {running}")
            time.sleep(0.01)

    def op_collect(self, batch: str, timeout: float) -> dict[str, Any]:
        tasks = self.batches[batch]
        _, not_done = tasks.wait(timeout)
        table = rows(tasks)
        history = {row["id"]: self.client.history(row["id"])
                   for row in table if (row["attempt"] or 1) > 1}
        return {"unfinished": len(not_done), "rows": table, "history": history,
                "counts": tasks.status_counts(), "workers": workers(self.client)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    config = Config(bootstrap=args.bootstrap, redis_url=args.redis, queue=args.queue,
                    key_prefix=args.key_prefix, heartbeat_interval=0.5, lease_seconds=3.0,
                    source="multihost client")

    def answer(message: dict[str, Any]) -> None:
        print(json.dumps(message), flush=True)

    try:
        session = Session(connect(config, args.connect_timeout))
    except Exception:  # noqa: BLE001 - reported to the test, which fails with it
        answer({"error": traceback.format_exc()})
        return 1
    answer({"ready": True, "host": socket.gethostname()})
    with session.client:
        for line in sys.stdin:
            request = json.loads(line)
            try:
                answer(getattr(session, f"op_{request.pop('op')}")(**request))
            except Exception:  # noqa: BLE001 - reported to the test, which fails with it
                answer({"error": traceback.format_exc()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
