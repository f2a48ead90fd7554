"""When a task is due (bottom layer): a countdown or an ETA, checked and put in the form
``enqueue.lua`` reads, so the due time is fixed on Redis's clock, not the client's.
"""

from __future__ import annotations

import datetime
import math

MAX_DELAY = 366 * 24 * 3600.0  # seconds; a later due time is almost surely a mistake


def due_spec(countdown: float | None = None, eta: datetime.datetime | None = None) -> str:
    """``"in:<seconds>"``, ``"at:<unix seconds>"``, or ``""`` for now.

    Raises:
        ValueError: both are given, the countdown is not a number of seconds from 0 to
            a year, or the ETA is not a timezone-aware datetime; the text says what to pass.
    """
    if countdown is not None and eta is not None:
        raise ValueError("pass countdown= (seconds from now) or eta= (a datetime), not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) \
                or not math.isfinite(countdown) or not 0 <= countdown <= MAX_DELAY:
            raise ValueError(f"countdown must be seconds from 0 to {MAX_DELAY:.0f} (a year), "
                             f"got {countdown!r}")
        return f"in:{float(countdown)!r}"
    if eta is not None:
        if not isinstance(eta, datetime.datetime):
            raise ValueError(f"eta must be a datetime, got {type(eta).__name__}")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise ValueError(f"eta {eta.isoformat()} has no time zone, so it names no one "
                             "moment: pass an aware datetime, e.g. "
                             "datetime.datetime.now(datetime.timezone.utc) + timedelta(...)")
        return f"at:{eta.timestamp()!r}"
    return ""
