"""News of tasks sent to the high or low priority level (adapter layer).

Every worker reads those levels' topics on threads of their own (``broker.level_lanes``).
Reading Kafka when nothing comes costs CPU in kafka-python, so a quiet reader waits
here instead, on a Redis channel a sender publishes to after it sent tasks at that
level: a client's ``submit``/``map``, a worker producing a task again. The news only
wakes readers early: a reader also looks on its own, less and less often while its
level stays quiet, so a task no one announced is read all the same.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

import redis

from yadtq.backend.parts import BackendPart
from yadtq.backend.redis_errors import at_the_edge
from yadtq.errors import BackendUnavailable
from yadtq.priority import Priority

logger = logging.getLogger(__name__)


class Subscription:
    """One reader's subscription to its level's news, and to a channel of its own by
    which its worker wakes it to stop."""

    def __init__(self, pubsub: redis.client.PubSub, wake: Callable[[], object]) -> None:
        self._pubsub = pubsub
        self._wake = wake

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for news; True if some came (all of it read).

        Raises:
            BackendUnavailable: Redis went away (subscribe again).
        """
        try:
            came = self._pubsub.get_message(ignore_subscribe_messages=True,
                                            timeout=timeout) is not None
            while came and self._pubsub.get_message(ignore_subscribe_messages=True,
                                                    timeout=0):
                pass
        except redis.RedisError as exc:
            raise BackendUnavailable(f"waiting for news of the level failed: {exc}") from exc
        return came

    def wake(self) -> None:
        """End the reader's wait now (its worker is stopping); best effort."""
        try:
            self._wake()
        except redis.RedisError as exc:  # the reader's wait ends on its own soon after
            logger.debug("could not wake a level's reader: %s", exc)

    def close(self) -> None:
        self._pubsub.close()


@at_the_edge
class LevelNews(BackendPart):
    """Announce tasks sent at a level, and listen for such announcements."""

    def announce(self, levels: Iterable[Priority]) -> None:
        """Tell the queue's workers that tasks were sent at ``levels`` (best effort: news
        only wakes readers early, so Redis failing here loses nothing)."""
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                if self.add_to(pipe, levels):
                    pipe.execute()
        except redis.RedisError as exc:
            logger.debug("could not announce tasks sent at %s: %s", levels, exc)

    def add_to(self, pipe: redis.client.Pipeline, levels: Iterable[Priority]) -> bool:
        """Put the announcements of ``levels`` in ``pipe`` (the doorbells' ring, say);
        False if there are none (only normal tasks were sent)."""
        announced = set(levels) - {Priority.NORMAL}
        for level in announced:
            pipe.publish(self._keys.level_news(level.value), "1")
        return bool(announced)

    def subscribe(self, level: Priority) -> Subscription:
        """A subscription to ``level``'s news."""
        channel = self._keys.level_news(level.value)
        own = f"{channel}:wake:{uuid.uuid4().hex}"
        pubsub = self.redis.pubsub()
        pubsub.subscribe(channel, own)
        return Subscription(pubsub, wake=lambda: self.redis.publish(own, "1"))
