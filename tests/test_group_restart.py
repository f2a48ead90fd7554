"""A queue's workers all stopped together and started again (real broker, real workers).

On Tansu 0.6 a group whose leader left while the group was re-forming could never form again,
so restarted workers consumed nothing (``yadtq/broker/group_leaving.py``); on either broker,
what is submitted after such a restart must run.
"""

from __future__ import annotations

import signal
import time

from kafka import KafkaConsumer

from worker_node.tasks import add
from yadtq.broker.group_leaving import is_tansu
from yadtq.local import LocalStack
from yadtq.local.stack import TANSU


def test_the_embedded_broker_is_told_apart_from_apache_kafka(stack: LocalStack) -> None:
    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap)
    try:
        consumer.topics()  # the cluster's metadata, with its id
        assert is_tansu(consumer) == (stack.broker == TANSU)
    finally:
        consumer.close()


def test_every_worker_stopped_together_and_started_again_serves_the_queue(
    client, start_workers
) -> None:
    # Given three workers that served the queue
    cluster = start_workers(3)
    client.wait_for_workers(3, timeout=60)
    assert client.map(add, [(i, i) for i in range(30)]).results(timeout=60) == [
        2 * i for i in range(30)]

    for restart in range(3):
        # When every worker is stopped at once (SIGTERM) and all are started again
        workers = [w for w in cluster.worker_processes if w.alive]
        for worker in workers:
            cluster.kill_worker(worker.name, signal.SIGTERM)
        for worker in workers:
            worker.popen.wait(30)
        started = time.monotonic()
        for worker in workers:
            cluster.start_worker(worker.name)

        # Then what is submitted after the restart runs, on every partition
        batch = client.map(add, [(restart, i) for i in range(24)])
        assert batch.results(timeout=45) == [restart + i for i in range(24)], \
            f"restart {restart}: {batch.status_counts()}"
        print(f"\n[group restart] {restart}: all 24 done {time.monotonic() - started:.1f} s "
              "after the start", flush=True)
