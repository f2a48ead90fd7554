"""The worker runtime (core layer): what ``python -m worker_node`` runs.

- ``runtime``: :class:`Worker`, the main loop (take, claim, start, commit).
- ``execution``: the slots that run a task, in a child process or a thread.
- ``outcomes``: what an attempt becomes, and the thread that stores it.
- ``maintenance``: heartbeat, lease renewal, due retries and the reaper.
- ``shipped``: checking and fetching a trusted task's pickles.
- ``redis_retry``: riding out a Redis outage, one thread at a time.
- ``worker_metrics``: the worker's own Prometheus histograms, served with --metrics-port.

Kafka is reached only through the adapter, ``yadtq.broker``.
"""

from yadtq.worker.runtime import DEFAULT_TASK_MODULES, Worker

__all__ = ["DEFAULT_TASK_MODULES", "Worker"]
