"""How a worker's consumer leaves the queue's group when the worker stops.

A member normally leaves (LeaveGroup), so that its partitions move on at once. Tansu 0.6's
group coordinator, though, can go on naming a leader that left while the group was
re-forming: every later join is told to wait for that leader's assignment, which never comes,
and the group never forms again. It was seen when every worker of a queue was stopped at once
and started again (4 restarts in 7 consumed nothing for minutes). Tansu drops a member that
misses its heartbeats together with its leadership, so on Tansu the group's leader closes
without leaving: its partitions move on after the session timeout instead of at once, and the
group always forms again.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

TANSU_CLUSTER_ID = "tansu_cluster"  # Tansu's default cluster id (its --kafka-cluster-id)


def is_tansu(consumer: Any) -> bool:
    """True if the consumer's cluster is a Tansu broker (by its default cluster id)."""
    cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
    return getattr(cluster, "cluster_id", None) == TANSU_CLUSTER_ID


def close_consumer(consumer: Any, name: str) -> None:
    """Close ``consumer``; it leaves the group unless it leads a group on Tansu (see above).

    kafka-python has no option for closing without leaving; a member whose generation is
    reset sends no LeaveGroup, which is what its own ``close`` then checks.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if is_tansu(consumer) and getattr(coordinator, "_is_leader", False):
        logger.info("Worker %s: leading the group on Tansu, closes without leaving it; its "
                    "partitions move on after the session timeout", name)
        coordinator.reset_generation()
    consumer.close()
