"""W3C trace context as a task carries it (bottom layer): no OpenTelemetry here.

A task submitted inside a traced span carries that span's context, the W3C
``traceparent`` (and ``tracestate`` if any) fields, twice: as Kafka message headers
(``docs/wire-format.md``), which any Kafka tool can read, and as fields of its Redis
record (``docs/redis-schema.md``), so a task produced again from its record (a
reaped lease, a retry, a workflow child readied later, a task that was due later)
links to the same trace. This module only moves those strings between the two
shapes; ``yadtq.tracing`` and ``yadtq.worker.spans`` make and read spans.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

FIELDS = ("traceparent", "tracestate")

# The carrier, as (field, value) pairs in ``FIELDS`` order; () for a task traced by no one.
# A tuple, so messages that share one compare equal (records.shares_fields).
Trace = tuple[tuple[str, str], ...]


def from_carrier(carrier: Mapping[str, str]) -> Trace:
    """The ``FIELDS`` a propagator wrote into ``carrier`` (empty values left out)."""
    return tuple((name, carrier[name]) for name in FIELDS if carrier.get(name))


def headers(trace: Trace) -> list[tuple[str, bytes]] | None:
    """Kafka message headers for ``trace``; None (no headers at all) when untraced."""
    return [(name, value.encode()) for name, value in trace] or None


def from_headers(pairs: Iterable[tuple[str, bytes | None]]) -> Trace:
    """The trace context in a Kafka message's headers; () if it has none (or bad bytes)."""
    found = {}
    for name, value in pairs:
        if name in FIELDS and value:
            try:
                found[name] = value.decode("ascii")
            except UnicodeDecodeError:  # not W3C trace context: ignore it, run the task
                return ()
    return from_carrier(found)
