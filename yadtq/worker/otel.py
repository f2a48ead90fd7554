"""A traced worker's spans (worker runtime; imported only when it traces, ``spans``).

Each attempt a slot ends becomes one ``yadtq.run <task>`` span (kind CONSUMER) over the
time it ran (measured where it ran, also for tasks run in a group), made once the
outcome is known. Its parent is
the context the task carries (``TaskMessage.trace``: its Kafka headers, or its Redis
record when it was claimed from there or produced again from it), so a re-run after a
worker died, a retry or a workflow child readied later stays in the submitter's trace.
An untraced task's span is a root.

The worker sets up an SDK ``TracerProvider`` only if the application has not set one
(an embedding program's, or ``opentelemetry-instrument``'s): its exporters are the
ones ``$OTEL_TRACES_EXPORTER`` names (OpenTelemetry's own variable: ``otlp``,
``console``, ``none``; ``otlp`` when unset and no trace file is given), found by the
entry points their packages register, each behind a batching processor. A trace file
gets the spans as JSON lines, one per span (``ReadableSpan.to_json``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from importlib.metadata import entry_points

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from yadtq import protocol
from yadtq.backend import Outcome
from yadtq.config import Config, otel_traces_exporters
from yadtq.errors import ConfigurationError
from yadtq.status import TaskStatus
from yadtq.trace_context import Trace

TRACER = "yadtq"
SERVICE = "yadtq-worker"  # service.name unless $OTEL_SERVICE_NAME (or a resource) names one


class RunSpans:
    """Makes a worker's ``yadtq.run`` spans (see the module docstring)."""

    def __init__(self, config: Config, worker: str) -> None:
        """Raises:
            ConfigurationError: an exporter ``$OTEL_TRACES_EXPORTER`` names is not installed.
        """
        self._worker = worker
        self._topic = config.tasks_topic
        provider = trace.get_tracer_provider()
        self._owned: TracerProvider | None = None
        if isinstance(provider, trace.ProxyTracerProvider):  # no one set one: ours
            provider = self._owned = TracerProvider(resource=_resource(worker))
            for exporter in _env_exporters(default_otlp=not config.trace_file):
                provider.add_span_processor(BatchSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
        if config.trace_file:
            if not hasattr(provider, "add_span_processor"):
                raise ConfigurationError("a trace file needs an OpenTelemetry SDK "
                                         "TracerProvider; the application set another kind")
            provider.add_span_processor(BatchSpanProcessor(
                JsonLinesExporter(config.trace_file.replace("{worker}", worker))))
        self._provider = provider
        self._tracer = provider.get_tracer(TRACER)
        # The last parent read, by the trace context it came from: a map's tasks share one.
        self._parent: tuple[Trace, Context] = ((), Context())

    def ran(self, message: protocol.TaskMessage, attempt: int, outcome: Outcome,
            started: float, seconds: float) -> None:
        """Record one attempt of ``message`` that began at ``started`` (unix seconds) and
        ran ``seconds``."""
        status = "retry" if outcome.retry_at is not None else outcome.status.value
        attributes = {
            "messaging.system": "kafka",
            "messaging.destination.name": message.priority.topic(self._topic),
            "messaging.operation.type": "process",
            "yadtq.task_id": message.id, "yadtq.attempt": attempt,
            "yadtq.worker": self._worker, "yadtq.status": status,
        }
        if message.batch is not None:
            attributes["yadtq.batch_id"] = message.batch
        span = self._tracer.start_span(
            f"yadtq.run {message.task}", context=self._parent_of(message.trace),
            kind=SpanKind.CONSUMER, attributes=attributes, start_time=int(started * 1e9))
        if outcome.status is TaskStatus.FAILED:
            span.add_event("exception", {"exception.type": outcome.error_type,
                                         "exception.message": outcome.error,
                                         "exception.stacktrace": outcome.traceback})
            span.set_status(Status(StatusCode.ERROR, f"{outcome.error_type}: {outcome.error}"))
        span.end(end_time=int((started + seconds) * 1e9))

    def _parent_of(self, trace_context: Trace) -> Context:
        """The context a task's trace fields name (an empty one for none: a root span)."""
        last, parent = self._parent
        if trace_context != last:
            parent = propagate.extract(dict(trace_context), context=Context())
            self._parent = (trace_context, parent)
        return parent

    def close(self) -> None:
        """Export what is left: shut our provider down, or flush the application's."""
        if self._owned is not None:
            self._owned.shutdown()
        elif hasattr(self._provider, "force_flush"):
            self._provider.force_flush()


class JsonLinesExporter(SpanExporter):
    """Appends each span to a file as one line of JSON (for tests and quick looks)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # closed by shutdown
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write the spans, one line each, and flush (a reader sees whole lines)."""
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock:
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def _resource(worker: str) -> Resource:
    """OpenTelemetry's resource (``$OTEL_RESOURCE_ATTRIBUTES``, ``$OTEL_SERVICE_NAME``)
    with this worker as the service instance, and ``yadtq-worker`` as the service if
    none is named."""
    resource = Resource.create({"service.instance.id": worker})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE}))
    return resource


def _env_exporters(default_otlp: bool) -> list[SpanExporter]:
    """The exporters ``$OTEL_TRACES_EXPORTER`` names, or OTLP when it names none and
    ``default_otlp``.

    Raises:
        ConfigurationError: a named exporter is not installed.
    """
    names = otel_traces_exporters() or (["otlp"] if default_otlp else [])
    exporters = []
    for name in names:
        if name == "none":
            continue
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            raise ConfigurationError(
                f"no OpenTelemetry span exporter {name!r} is installed (OTEL_TRACES_EXPORTER, "
                "'otlp' when unset): pip install opentelemetry-exporter-otlp adds 'otlp'; "
                "'console' comes with the SDK; or give the worker --trace-file PATH")
        exporters.append(found[0].load()())
    return exporters
