"""The Kafka adapter (adapter layer): everything that speaks kafka-python.

- :class:`TaskProducer` (``producer``): sends task messages and dead letters;
  the client and the worker each hold one.
- :class:`TaskConsumer` (``consumer``): a worker's membership of the queue's
  consumer group behind ``take`` / ``hold`` / ``claimed`` / ``commit`` /
  ``steal`` / ``close``, handing out :class:`Delivery` objects.
- :func:`create_topics` (``topics``): the queue's topics, made by yadtq.
- ``clients`` builds the kafka-python objects with yadtq's settings, and
  ``stealing`` reads other members' partitions.

Nothing outside this package imports kafka-python.
"""

from yadtq.broker.consumer import TaskConsumer
from yadtq.broker.delivery import Delivery
from yadtq.broker.producer import DELIVERY_TIMEOUT, TaskProducer
from yadtq.broker.topics import create_topics

__all__ = ["DELIVERY_TIMEOUT", "Delivery", "TaskConsumer", "TaskProducer", "create_topics"]
