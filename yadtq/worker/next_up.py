"""The next long task, claimed by the slot that frees for it (worker runtime).

While tasks are long, a slot that frees used to wake the loop, which then took
candidates from the read-ahead, accepted them and claimed one: about 1.5 ms a task,
on the loop's wake-up, its take and a hand-over back to a slot, every one of them a
moment the slot stands idle (issue 24: a few per cent of balance). So, while every
slot is busy, the loop prepares the candidates the next claim would take (taken from
the read-ahead, accepted, in order), and the slot whose task ends claims one of them
itself, in one round trip, and runs it: no thread wakes in between.

The read-ahead and the consumer stay the loop's alone. What the slot's claim consumed
or left untouched is settled by the loop (:meth:`NextUp.withdraw`) before it takes
anything again, so each partition's deliveries still leave in offset order, and
prepared candidates the slots did not use go back where they were.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from yadtq.backend import Claim, RedisBackend
from yadtq.errors import BackendUnavailable
from yadtq.protocol import TaskMessage
from yadtq.worker.intake import Taken

PREPARING_WAIT = 0.02  # seconds a freed slot waits for the loop's preparation, at most


class NextUp:
    """Candidates prepared for the next slot to free, and what slots claimed of them.

    Slots that free together claim from the same candidates at once, each its own round
    trip (Redis runs the claims one after another: each takes the first still queued).
    Slots that began together on tasks of like length end together, and one claim after
    another would keep the last of them waiting for them all. What the claims used is
    known once the last of them is back.
    """

    def __init__(self, backend: RedisBackend, worker: str, clock: Callable[[], float]
                 ) -> None:
        self._backend = backend
        self._worker = worker
        self._clock = clock
        self._changed = threading.Condition()
        self._prepared: Taken | None = None
        self._claiming = 0  # slots' claims of the prepared candidates under way
        self._answers: list[list[Claim] | None] = []  # of those back (None: Redis failed)
        self._preparing = False  # the loop took them back to prepare afresh
        self._settled: list[tuple[Taken, list[Claim] | None]] = []

    def prepare(self, taken: Taken | None) -> None:
        """Offer candidates to the next slot that frees (None: there are none), after a
        :meth:`withdraw` that was ``preparing``."""
        with self._changed:
            self._prepared = taken
            self._preparing = False
            self._changed.notify_all()

    def withdraw(self, preparing: bool = False) -> list[tuple[Taken, list[Claim] | None]]:
        """Take back what is prepared, once no slot is claiming from it, and what the
        slots' claims left to settle: each with its claims (None: nothing claimed).
        ``preparing``: the loop prepares afresh at once (:meth:`prepare`), and a slot that
        frees meanwhile waits for that, rather than hand its claim to the loop."""
        with self._changed:
            self._changed.wait_for(lambda: not self._claiming)  # one round trip at most
            if self._prepared is not None:
                self._settled.append((self._prepared, None))
                self._prepared = None
            settled, self._settled = self._settled, []
            self._preparing = preparing
        return settled

    @property
    def prepared(self) -> int:
        """How many candidates wait for the next slot to free."""
        prepared = self._prepared
        return 0 if prepared is None else len(prepared.tasks)

    def claim_next(self) -> tuple[TaskMessage, int] | None:
        """For a slot just freed: claim the oldest prepared task still queued (the ones
        after it stay prepared); None if none is prepared, all were taken elsewhere, or
        Redis did not answer (the loop then claims for the slot)."""
        with self._changed:
            # the loop's preparation under way takes a turn's take: wait for it
            self._changed.wait_for(lambda: not self._preparing, PREPARING_WAIT)
            taken = self._prepared
            if taken is None or self._preparing:
                return None
            self._claiming += 1
        claims = None
        try:
            claims = self._backend.claim_many(taken.tasks, self._worker, now=self._clock(),
                                              offsets=taken.offsets, limit=1)
        except BackendUnavailable:
            pass  # untouched: the loop takes them again
        finally:
            with self._changed:
                self._claiming -= 1
                self._answers.append(claims)
                if not self._claiming:
                    self._settle(taken)
                    self._changed.notify_all()
        for task, claim in zip(taken.tasks, claims or [], strict=False):
            if claim.attempt is not None:
                return task, claim.attempt
        return None

    def _settle(self, taken: Taken) -> None:
        """Every claim of the prepared candidates is back (under the lock): what any of
        them used is the loop's to settle; what all left untouched stays prepared."""
        answers = [claims for claims in self._answers if claims is not None]
        self._answers = []
        if not answers:  # Redis did not answer: the loop takes them all back
            self._prepared = None
            self._settled.append((taken, None))
            return
        merged = [next((claim for claim in column if not claim.untouched), column[0])
                  for column in zip(*answers, strict=True)]
        used, used_claims, rest = taken.split(merged)
        self._settled.append((used, used_claims))
        self._prepared = rest if rest.tasks else None
