"""Celery app for ``benchmarks/peers.py`` (``celery -A peer_celery worker``).

Broker and result backend: ``$PEERS_REDIS_URL``. ``$PEERS_CELERY_PREFETCH`` and
``$PEERS_CELERY_ACKS_LATE`` set the worker's prefetch multiplier and late acks
(1 and on for the balance workload).
"""

from __future__ import annotations

import os

from celery import Celery
from peer_tasks import add, sleep

_redis_url = os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("peer_celery", broker=_redis_url, backend=_redis_url)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("PEERS_CELERY_PREFETCH", "4")),
    task_acks_late=os.environ.get("PEERS_CELERY_ACKS_LATE") == "1",
    worker_hijack_root_logger=False,
)
celery_add = app.task(add, name="peer_tasks.add")
celery_sleep = app.task(sleep, name="peer_tasks.sleep")
