"""Rate and concurrency limits of a task (bottom layer): what ``@yadtq.task`` declares,
checked once at decoration, and what one call of the task is limited by.

A task may declare ``rate_limit="20/s"`` (also ``/m`` and ``/h``): at most that many of
its calls start in any window of that length, across every worker of the queue,
optionally one limit per value of an argument (``rate_key="customer"``); and
``concurrency=2``: at most that many run at once across every worker. The limits are
decided where a task is claimed, by a Lua script on Redis's clock
(``backend/lua/lib/limits.lua``): a call over a limit waits ``scheduled`` (it spends no
attempt and holds no slot) until the limit lets it start. The worker's own registry is
the source of the limits, so a call from any client, plain-format ones included, is
limited alike: :meth:`Limits.claim_spec` is what the worker hands the claim script.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
_ALLOWED_RATES = "a count per second, minute or hour, such as '20/s', '100/m' or '5000/h'"
MAX_KEY_CHARS = 200  # a rate key's text longer than this is cut (it names a Redis key)


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any window of ``period`` seconds."""

    count: int
    period: float
    text: str  # as declared, normalised: "20/s"

    @classmethod
    def parse(cls, spec: str) -> Rate:
        """A rate from its text, "<count>/<s|m|h>".

        Raises:
            ValueError: not of that form, or a count under 1; the text says what is allowed.
        """
        match = _RATE.match(spec) if isinstance(spec, str) else None
        if match is None or int(match[1]) < 1:
            raise ValueError(f"rate_limit={spec!r} is not a rate: use {_ALLOWED_RATES}, with "
                             "a count of at least 1")
        return cls(int(match[1]), PERIODS[match[2]], f"{int(match[1])}/{match[2]}")


@dataclass(frozen=True)
class Limits:
    """The limits one task declares; build with :meth:`declare`."""

    rate: Rate | None = None
    rate_key: str | None = None  # the parameter whose value keys the rate limit
    concurrency: int | None = None
    _signature: inspect.Signature | None = None

    @classmethod
    def declare(cls, function: Callable[..., Any], rate_limit: str | None,
                rate_key: str | None, concurrency: int | None) -> Limits | None:
        """The limits ``function`` declares, checked; None when it declares none.

        Raises:
            ValueError: a bad rate, a ``rate_key`` without a rate or that names no
                parameter of ``function``, or a concurrency that is not a whole number
                of at least 1; the text says what is allowed.
        """
        if rate_limit is None and rate_key is None and concurrency is None:
            return None
        rate = Rate.parse(rate_limit) if rate_limit is not None else None
        if concurrency is not None and (type(concurrency) is not int or concurrency < 1):
            raise ValueError(f"concurrency={concurrency!r} is not allowed: give how many calls "
                             "may run at once across all workers, a whole number of at least 1")
        signature = None
        if rate_key is not None:
            if rate is None:
                raise ValueError(f"rate_key={rate_key!r} needs a rate_limit to key, "
                                 f"such as rate_limit='20/s'")
            try:
                signature = inspect.signature(function)
            except (TypeError, ValueError):
                signature = None
            if signature is None or rate_key not in signature.parameters:
                names = ", ".join(signature.parameters) if signature else "none found"
                raise ValueError(f"rate_key={rate_key!r} names no parameter of "
                                 f"{getattr(function, '__qualname__', function)!r}; "
                                 f"its parameters: {names}")
        return cls(rate, rate_key, concurrency, signature)

    def key_value(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The text of the ``rate_key`` argument of one call ("" for none, or for a call
        that does not bind: it fails when run)."""
        if self.rate_key is None or self._signature is None:
            return ""
        try:
            bound = self._signature.bind_partial(*args, **kwargs)
        except TypeError:
            return ""
        bound.apply_defaults()
        value = bound.arguments.get(self.rate_key)
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                                default=repr)
        return text[:MAX_KEY_CHARS]

    def claim_spec(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """What limits one call, as claim.lua reads it (JSON): ``r`` count and period,
        ``rt`` the rate's text, ``k`` the rate key's value, ``c`` the concurrency."""
        spec: dict[str, Any] = {}
        if self.rate is not None:
            spec.update(r=[self.rate.count, self.rate.period], rt=self.rate.text,
                        k=self.key_value(args, kwargs))
        if self.concurrency is not None:
            spec["c"] = self.concurrency
        return json.dumps(spec, separators=(",", ":"))

    def describe(self) -> str:
        """One line for logs and docs: "rate 20/s per customer, concurrency 2"."""
        parts = []
        if self.rate is not None:
            per = f" per {self.rate_key}" if self.rate_key else ""
            parts.append(f"rate {self.rate.text}{per}")
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        return ", ".join(parts)
