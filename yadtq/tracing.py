"""Producer spans (core layer): a submit or map made inside a traced span joins its trace.

A client needs no setting for it. When the calling program has imported OpenTelemetry
(``opentelemetry.trace`` is in ``sys.modules``: a program that traces has) and a span
is current, :func:`producing` opens a ``yadtq.submit <task>`` or ``yadtq.map <task>``
span (kind PRODUCER) around the call and yields its W3C trace context, which the
tasks carry in their Kafka headers and Redis records (``yadtq.trace_context``). A
worker started with tracing runs each task in a span whose parent is that one
(``yadtq.worker.spans``).

Nothing here imports OpenTelemetry unless the program already did, so a program that
does not trace pays one dictionary lookup per call. A map makes one span, not one per
task: its tasks share the map's context (one field of their shared record fields, one
header value), so tracing adds nothing per task to a 100,000-task map; each worker span
names its task by ``yadtq.task_id`` and is a child of the map's span.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from yadtq.trace_context import Trace, from_carrier

TRACER = "yadtq"


def _api() -> ModuleType | None:
    """``opentelemetry.trace`` when the program imported it and a span is current, else
    None (a non-recording but valid span counts: its sampling decision travels on)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None or not api.get_current_span().get_span_context().is_valid:
        return None
    return api


@contextmanager
def producing(operation: str, task: str, topic: str, batch: str | None = None
              ) -> Iterator[Trace]:
    """A PRODUCER span ``yadtq.<operation> <task>`` around sending tasks (of ``batch``)
    to ``topic``, yielding its trace context for them; yields () when no one traces.

    An exception that leaves the block is recorded on the span, which it ends as an error.
    """
    api = _api()
    if api is None:
        yield ()
        return
    from opentelemetry import propagate  # the program traces: it has OpenTelemetry

    attributes = {"messaging.system": "kafka", "messaging.destination.name": topic,
                  "messaging.operation.type": "send", "yadtq.task": task}
    if batch is not None:
        attributes["yadtq.batch_id"] = batch
    with api.get_tracer(TRACER).start_as_current_span(
            f"yadtq.{operation} {task}", kind=api.SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield from_carrier(carrier)
