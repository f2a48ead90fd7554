"""Whether a worker traces (worker runtime): a span per attempt, or nothing at all.

With ``tracing`` (``python -m worker_node --tracing``, ``$YADTQ_TRACING=1``, or a
``trace_file``) each attempt a slot ends becomes a ``yadtq.run <task>`` span, a
child of the span that submitted the task (``yadtq.worker.otel``). Without it the
slots report to :data:`NO_SPANS`, which does nothing, and no OpenTelemetry module
is imported: an untraced worker pays one empty method call per task.
"""

from __future__ import annotations

from typing import Protocol

from yadtq import protocol
from yadtq.backend import Outcome
from yadtq.config import Config
from yadtq.errors import ConfigurationError
from yadtq.extras import OTEL_EXTRA


class Spans(Protocol):
    """What the slots tell of each attempt they end."""

    def ran(self, message: protocol.TaskMessage, attempt: int, outcome: Outcome,
            started: float, seconds: float) -> None:
        """An attempt that began at ``started`` (unix seconds) and ran ``seconds`` ended
        with ``outcome``."""

    def close(self) -> None:
        """Send the spans not yet exported (the worker is stopping)."""


class NoSpans:
    """The worker does not trace."""

    def ran(self, message: protocol.TaskMessage, attempt: int, outcome: Outcome,
            started: float, seconds: float) -> None:
        """Nothing to record."""

    def close(self) -> None:
        """Nothing to send."""


NO_SPANS = NoSpans()


def worker_spans(config: Config, worker: str) -> Spans:
    """The spans of a worker named ``worker``: :data:`NO_SPANS` unless it traces.

    Raises:
        ConfigurationError: tracing is on and OpenTelemetry (the ``otel`` extra), or an
            exporter ``$OTEL_TRACES_EXPORTER`` names, is not installed.
    """
    if not (config.tracing or config.trace_file):
        return NO_SPANS
    try:
        from yadtq.worker import otel
    except ImportError as exc:
        raise ConfigurationError(
            f"tracing (--tracing, YADTQ_TRACING or a trace file) needs OpenTelemetry, "
            f"which is not installed ({exc}): {OTEL_EXTRA} adds it") from None
    return otel.RunSpans(config, worker)
