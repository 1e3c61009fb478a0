"""Reading how long a server asked us to wait."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime

__all__ = ["parse_retry_after"]

_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*").fullmatch


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
    ms = _header(headers, "retry-after-ms")
    if ms is not None and (match := _NUMBER(ms)):
        return float(match[1]) / 1000.0
    value = _header(headers, "retry-after")
    if value is None:
        return None
    if match := _NUMBER(value):
        return float(match[1])
    return _seconds_until(value, time.time() if now is None else now)


def _header(headers: Mapping[str, str], lower_name: str) -> str | None:
    value = headers.get(lower_name)
    if value is None:
        # Plain dicts are case-sensitive; aiohttp's headers are not.
        for key, candidate in headers.items():
            if key.lower() == lower_name:
                return candidate
    return value


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
    if math.isnan(delta):
        return None
    return max(delta, 0.0)
