"""``connect()`` (top layer): turn arguments, environment or a local stack into a Client.

It sits above ``local`` because ``connect("local")`` may have to start the
embedded stack and pass its addresses down as a :class:`~yadtq.config.Config`.
"""

from __future__ import annotations

import atexit
import weakref
from typing import TYPE_CHECKING, Any

from yadtq import display
from yadtq.config import Config, read_local_stack_record, resolve_config
from yadtq.display import NotebookClient
from yadtq.errors import ConfigurationError

if TYPE_CHECKING:
    from yadtq.local import LocalCluster

LOCAL = "local"
READY_TIMEOUT = 60.0  # seconds a stack connect() starts gets for its workers to join


def connect(
    target: str | Config | LocalCluster | None = None,
    *,
    bootstrap: str | None = None,
    redis_url: str | None = None,
    queue: str | None = None,
    workers: int = 3,
    **settings: Any,
) -> NotebookClient:
    """Connect to a yadtq queue.

    Args:
        target: None to use arguments, then ``YADTQ_BOOTSTRAP``/``YADTQ_REDIS_URL``,
            then a running ``yadtq local up`` stack; ``"local"`` to attach to a
            running local stack or, if there is none, start one (with ``workers``
            worker processes) that lives until the client is closed, and return
            once its workers hold the queue's partitions, so the first task runs at
            once; a :class:`~yadtq.config.Config` or a started ``LocalCluster`` to
            use its servers. Addresses of a running local stack bring its other
            settings (its secret, queue, key prefix) unless they are given.
        bootstrap: Kafka bootstrap servers, ``host:port[,host:port]``.
        redis_url: Redis URL, e.g. ``redis://localhost:6379/0``.
        queue: queue name (default ``"default"``).
        workers: worker processes of a local stack this call starts.
        **settings: other :class:`~yadtq.config.Config` fields.

    Raises:
        ConfigurationError: no servers are configured and ``target`` is not "local".
        ConnectionFailed: Kafka or Redis did not answer; names the address tried.
        TimeoutError: the workers of a stack this call started did not take their
            partitions within a minute (the stack is stopped).
    """
    display.register()
    if isinstance(target, Config):
        return NotebookClient(target.with_overrides(queue=queue, **settings))
    if hasattr(target, "config") and isinstance(target.config, Config):
        return NotebookClient(target.config.with_overrides(queue=queue, **settings))
    if target not in (None, LOCAL):
        raise ConfigurationError(
            f"unknown connect target {target!r}: use connect() with bootstrap=/redis_url= "
            "(or YADTQ_BOOTSTRAP/YADTQ_REDIS_URL), or connect('local')"
        )
    explicit = bootstrap is not None or redis_url is not None
    if target == LOCAL and not explicit and read_local_stack_record() is None:
        return _start_owned_local_stack(queue, workers, settings)
    config = resolve_config(bootstrap=bootstrap, redis_url=redis_url, queue=queue, **settings)
    return NotebookClient(config)


def _start_owned_local_stack(
    queue: str | None, workers: int, settings: dict[str, Any]
) -> NotebookClient:
    from yadtq.local import LocalCluster

    # The settings go to the cluster, so its workers use the same ones as this client.
    cluster = LocalCluster(workers=workers, queue=queue or "default", settings=settings)
    cluster.__enter__()
    try:
        client = NotebookClient(cluster.config, on_close=cluster.stop)
    except BaseException:
        cluster.stop()
        raise
    try:
        cluster.wait_ready(READY_TIMEOUT, client=client)
    except BaseException:
        client.close()  # stops the cluster too
        raise
    # A client never closed is closed at exit before the stack stops (atexit runs
    # last-registered first, weakref finalizers after), so it does not watch its
    # servers go away. The weak reference lets a dropped client be collected.
    atexit.register(_close_at_exit, weakref.ref(client))
    return client


def _close_at_exit(reference: weakref.ref[NotebookClient]) -> None:
    client = reference()
    if client is not None:
        client.close()
