"""Priority levels (bottom layer): which of the queue's topics a task travels on.

Kafka has no priority, and a worker reads each partition in order, so a task sent
behind a deep backlog waits for all of it. yadtq therefore gives each level a topic of
its own: ``normal`` tasks keep the queue's tasks topic (what plain clients write to and
read), ``high`` and ``low`` ones go to ``<tasks topic>.high`` and ``.low``. The three
topics have the same partition count and one consumer group reads them, so a worker owns
partition *p* of every level (Kafka's range assignor) and one doorbell wakes it for all.
The worker's Kafka adapter hands out buffered high tasks before normal ones, and normal
before low (``broker.consumer``); a task that has waited longer than
``Config.priority_starvation`` seconds goes first whatever its level, so no level starves.

The level travels in the message as an optional ``"priority"`` field (absent: normal)
and is kept in the task's record, so a retry, a reaped lease, a scheduled or a dependent
task goes back to its level's topic.
"""

from __future__ import annotations

import enum

from yadtq.errors import ProtocolError


class Priority(str, enum.Enum):
    """A task's level; higher levels are taken first."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the level taken first."""
        return _RANKS[self]

    def topic(self, tasks_topic: str) -> str:
        """This level's topic, given the queue's tasks topic (which normal tasks use)."""
        return tasks_topic if self is Priority.NORMAL else f"{tasks_topic}.{self.value}"


_RANKS = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
LEVELS = tuple(Priority)  # highest first


def priority(value: Priority | str | None) -> Priority:
    """``value`` as a :class:`Priority` (None: normal).

    Raises:
        ValueError: not one of "high", "normal" or "low".
    """
    if value is None:
        return Priority.NORMAL
    try:
        return Priority(value)
    except ValueError:
        raise ValueError(f"priority must be 'high', 'normal' or 'low', got {value!r}") from None


def read_priority(value: object) -> Priority:
    """The wire field ``priority`` (absent or null: normal).

    Raises:
        ProtocolError: it is not one of the level names.
    """
    try:
        return priority(value)  # type: ignore[arg-type]  # checked here
    except ValueError:
        raise ProtocolError(f"field 'priority' must be 'high', 'normal' or 'low', got "
                            f"{value!r:.40}") from None


def level_of_topic(topic: str, tasks_topic: str) -> Priority:
    """The level whose topic ``topic`` is (normal for the tasks topic or any other)."""
    for level in (Priority.HIGH, Priority.LOW):
        if topic == level.topic(tasks_topic):
            return level
    return Priority.NORMAL
