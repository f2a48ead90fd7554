"""Firing schedules from a worker (worker runtime): the maintenance duty's body.

Every worker looks, ``DUE_CHECK_INTERVAL`` apart (one ``ZRANGEBYSCORE`` of the schedules
set while none is near; Redis's ``TIME`` too when one is), and fires what is due through
``yadtq.schedules.fire``: no leader, no lock to expire. Two workers firing the same
schedule at once plan the same occurrences, and the compare-and-set in
``fire_schedule.lua`` lets one of them through; the tasks it writes wait in the scheduled
set, which ``send_due_scheduled`` produces, so a worker that dies right after firing
leaves nothing lost.
"""

from __future__ import annotations

import logging

from yadtq import protocol
from yadtq.backend import RedisBackend
from yadtq.errors import BackendUnavailable, ProtocolError
from yadtq.schedules import fire, template_message

logger = logging.getLogger(__name__)


class ScheduleFirer:
    """One worker's firing of its queue's due schedules."""

    def __init__(self, backend: RedisBackend, worker: str) -> None:
        self._backend = backend
        self._worker = worker
        self._templates: dict[tuple[str, str], protocol.TaskMessage | None] = {}
        self._failed: set[tuple[str, str | None]] = set()  # told of, until the rev moves
        self.fired = 0  # tasks this worker wrote for schedules, for its heartbeat record

    def fire_due(self, now: float | None = None) -> int:
        """Fire every due schedule's occurrences; returns how many tasks were written.

        ``now`` None judges by Redis's clock (always, outside tests). One schedule's
        failure is logged and skipped, never stops the others.
        """
        store = self._backend.schedules
        names, judged = store.due(now)
        written = 0
        for name in names:
            raw = store.get(name)
            if raw is None or raw.get("paused") == "1" or "template" not in raw:
                continue
            template = self._template(name, raw)
            if template is None:
                continue
            try:
                verdict, ids = fire(self._backend, name, raw, judged, self._worker,
                                    inject_now=now is not None, template=template)
            except BackendUnavailable:
                raise  # the maintenance loop waits for Redis
            except Exception as exc:  # noqa: BLE001 - one schedule never stops the others
                # A shipped function and no secret to sign it with, a spec this version
                # cannot read, ...: said once, not every look, until the schedule moves.
                if (name, raw.get("rev")) not in self._failed:
                    logger.error("Worker %s: cannot fire schedule %r: %s", self._worker,
                                 name, exc)
                    self._failed.add((name, raw.get("rev")))
                continue
            if verdict == "ok":
                written += len(ids)
                self.fired += len(ids)
                logger.debug("Worker %s: schedule %r fired %s", self._worker, name, ids)
        return written

    def _template(self, name: str, raw: dict[str, str]) -> protocol.TaskMessage | None:
        """The schedule's message, checked once per stored template (None: refused)."""
        key = (name, raw["template"])
        if key not in self._templates:
            if len(self._templates) > 1000:
                self._templates.clear()
                self._failed.clear()
            try:
                self._templates[key] = template_message(raw, self._backend.config)
            except ProtocolError as exc:
                logger.error("Worker %s: schedule %r is not fired: its task message is "
                             "refused (%s); store it again from a client with the workers' "
                             "YADTQ_SECRET", self._worker, name, exc)
                self._templates[key] = None
        return self._templates[key]
