"""Long tasks go oldest first, whoever's partition holds them (worker runtime).

Kafka gives each worker whole partitions, so a worker that runs only its own tasks
in order can sit on a backlog of long ones while another idles; stealing only
once a worker's partitions are drained fixes that late and by guesswork (what a
task costs is unknown until it runs). While tasks are long (``slots.SHORT_TASK``
on average), the worker's read-ahead therefore also shows what waits in the others'
partitions (``yadtq.broker.read_ahead``), and a free slot claims the queue's oldest
task: greedy list scheduling in submission order, as one shared queue would do it,
within a few per cent of the best any scheduler reaches on unknown durations.

One claim takes the candidates in that order and claims the first ones still
queued, one a free slot: what the others took meanwhile is passed over, and
what the limit left untouched goes back to the read-ahead. A task is claimed
only for a free slot, so none waits behind a running one while a worker idles.
"""

from __future__ import annotations

from yadtq.broker import Delivery
from yadtq.protocol import TaskMessage

LOOKED_PAST = 8  # candidates a claim may pass over (taken elsewhere since the last look)


def candidates(deliveries: list[Delivery], accepted: list[TaskMessage],
               served: frozenset[str]) -> list[TaskMessage]:
    """The tasks to claim, in the order taken: this worker's own it accepted, and the
    foreign ones it serves (their owner dead-letters or hands on the rest)."""
    kept = {id(message) for message in accepted}
    return [d.message for d in deliveries if d.message is not None and (
        id(d.message) in kept or (d.foreign and d.message.route in served))]


def claimed_offsets(own: list[Delivery], tasks_topic: str, limited: bool) -> dict[int, int]:
    """How far each partition of the normal level is claimed, for thieves (who steal
    from that level only). Under a limit the claim may leave any of them queued, so
    only what came before them: a thief then looks at a few claimed tasks, rather
    than missing queued ones."""
    offsets: dict[int, int] = {}
    for delivery in own:
        if delivery.topic == tasks_topic:
            if limited:
                offsets.setdefault(delivery.partition, delivery.offset)
            else:
                offsets[delivery.partition] = delivery.offset + 1
    return offsets
