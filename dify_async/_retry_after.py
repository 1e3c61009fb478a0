"""Reading how long a server asked us to wait.

Three forms are understood, in this order:

- ``retry-after-ms: 1500``: milliseconds (sent by some API gateways);
- ``Retry-After: 120``: delta-seconds (RFC 9110; a fraction is tolerated);
- ``Retry-After: Wed, 21 Oct 2015 07:28:00 GMT``: an HTTP date.

Anything else (negative numbers, exponents, words, impossible dates, values
too large to be a number) is garbage and reads as ``None``: the caller falls
back to its own backoff. Nothing here raises.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]

_NUMBER = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*", re.ASCII).fullmatch


def parse_retry_after(
    headers: Mapping[str, str], *, now: float | None = None
) -> float | None:
    """Return the wait a response asks for, in seconds, or ``None``.

    Reads ``retry-after-ms`` (milliseconds) first, then ``Retry-After`` as
    delta-seconds or as an HTTP date (a date in the past means ``0``).
    Values that cannot be read (negative, garbage) give ``None``, so the
    caller falls back to its own backoff. Never raises.

    Args:
        headers: Response headers; looked up case-insensitively.
        now: The current unix time, for HTTP dates (default: the clock).
    """
    milliseconds = _number(_header(headers, "retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000.0
    value = _header(headers, "retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return seconds
    return _seconds_until(value, time.time() if now is None else now)


def _header(headers: Mapping[str, str], lower_name: str) -> str | None:
    value = headers.get(lower_name)
    if value is None:
        # Plain dicts are case-sensitive; aiohttp's headers are not.
        for key, candidate in headers.items():
            if key.lower() == lower_name:
                return candidate
    return value


def _number(value: str | None) -> float | None:
    if value is None or not (match := _NUMBER(value)):
        return None
    number = float(match[1])
    return number if math.isfinite(number) else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        delta = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    if not math.isfinite(delta):
        return None
    return max(delta, 0.0)
