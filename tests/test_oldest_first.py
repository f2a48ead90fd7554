"""Long tasks go oldest first, whoever's partition holds them (issue 24): the read-ahead's
view of other workers' partitions (real workers stealing the oldest first:
``test_end_to_end``).
"""

from __future__ import annotations

import dataclasses

from yadtq import protocol
from yadtq.broker.delivery import Delivery
from yadtq.broker.read_ahead import ReadAhead

TOPIC = "yadtq.q.tasks"


def delivery(partition: int, offset: int, at_ms: int, foreign: bool = False) -> Delivery:
    message = protocol.build("sleep", [0.1], task_id=f"p{partition}-{offset}")
    message = dataclasses.replace(message, submitted_at=at_ms / 1000)  # sent then
    return Delivery(TOPIC, partition, offset, at_ms, None, b"", message, foreign=foreign)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message.id for d in deliveries]


def test_the_view_of_other_partitions_mixes_in_by_age_and_is_not_counted_as_ours() -> None:
    # Given two tasks of our own, and three in another worker's partition, sent in between
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(0, 0, 100), delivery(0, 1, 400)])
    buffer.show_foreign([delivery(5, 7, 200, True), delivery(5, 8, 300, True),
                         delivery(5, 9, 500, True)])

    # Then only ours count as waiting here
    assert len(buffer) == 2 and buffer.waiting() == {1: 2}
    # And they are handed out oldest first, whoever's partition they are in
    taken = buffer.take(4, now_ms=1_000)
    assert ids(taken) == ["p0-0", "p5-7", "p5-8", "p0-1"]
    assert len(buffer) == 0

    # When the claim's limit left the last three untouched, they go back in front, in order
    buffer.give_back(taken[1:])
    assert len(buffer) == 1
    assert ids(buffer.take(5, now_ms=1_000)) == ["p5-7", "p5-8", "p0-1", "p5-9"]


def test_a_fresh_look_replaces_the_view_and_forgetting_it_keeps_our_own() -> None:
    buffer = ReadAhead(TOPIC, starvation_ms=30_000)
    buffer.add(TOPIC, 0, [delivery(0, 0, 900)])
    buffer.show_foreign([delivery(3, 0, 100, True)])
    buffer.show_foreign([delivery(4, 0, 200, True)])  # partition 3's was claimed meanwhile
    assert ids(buffer.take(1, now_ms=1_000)) == ["p4-0"]

    buffer.show_foreign([delivery(4, 1, 300, True)])
    buffer.forget_foreign()  # tasks turned short, or the group rebalanced
    assert ids(buffer.take(5, now_ms=1_000)) == ["p0-0"]
