"""The client's settings: one attrs class, validated once, overridden per call.

Every setting is checked by its field's converter, so a :class:`Settings` that
exists is valid, and :meth:`Settings.override` (``attrs.evolve``) checks an
override the same way. An argument left out of a call is :data:`UNSET` and
means "the client's value"; ``deadline=None`` on a call means "no deadline".
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, TypeAlias, cast

import aiohttp
import attrs

from ._transport import DEFAULT_TIMEOUT, to_timeout
from ._validation import (
    check_api_key,
    check_callable,
    check_count,
    check_seconds,
    normalize_base_url,
)

__all__ = [
    "DEFAULT_MAX_RESPONSE_SIZE",
    "UNSET",
    "OnRetry",
    "Settings",
    "Unset",
]

DEFAULT_MAX_RESPONSE_SIZE: Final = 8 * 1024 * 1024
"""A conversation is a few KiB; a decoded body past 8 MiB is refused."""

OnRetry: TypeAlias = Callable[..., object]
"""``on_retry(event)``: a plain or async callable given a :class:`RetryEvent`."""


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "<the client's value>"


UNSET: Final = Unset.UNSET
"""A per-call argument left out: the client's setting applies."""


def _deadline(value: object) -> float | None:
    return check_seconds(value, "deadline", allow_none=True)


def _max_retry_after(value: object) -> float | None:
    return check_seconds(value, "max_retry_after", allow_none=True)


def _max_rate(value: object) -> float | None:
    return check_seconds(value, "max_rate", allow_none=True)


def _max_retries(value: object) -> int:
    return check_count(value, "max_retries", minimum=0)


def _connection_limit(value: object) -> int:
    return check_count(value, "connection_limit", minimum=0)


def _max_response_size(value: object) -> int:
    return check_count(value, "max_response_size", minimum=1)


def _on_retry(value: object) -> OnRetry | None:
    check_callable(value, "on_retry")
    return cast("OnRetry | None", value)


@attrs.frozen
class Settings:
    """Everything a client was configured with, each value checked.

    The first five fields can be overridden per call or per
    :meth:`~dify_async.AsyncDifyClient.with_options` view; the others belong
    to the client and its connection pool.
    """

    timeout: aiohttp.ClientTimeout = attrs.field(
        default=DEFAULT_TIMEOUT, converter=to_timeout
    )
    deadline: float | None = attrs.field(default=None, converter=_deadline)
    max_retries: int = attrs.field(default=2, converter=_max_retries)
    max_retry_after: float | None = attrs.field(
        default=60.0, converter=_max_retry_after
    )
    on_retry: OnRetry | None = attrs.field(default=None, converter=_on_retry)
    api_key: str = attrs.field(default="", converter=check_api_key, repr=False)
    base_url: str = attrs.field(default="", converter=normalize_base_url)
    max_rate: float | None = attrs.field(default=None, converter=_max_rate)
    connection_limit: int = attrs.field(default=100, converter=_connection_limit)
    max_response_size: int = attrs.field(
        default=DEFAULT_MAX_RESPONSE_SIZE, converter=_max_response_size
    )

    def override(
        self,
        *,
        timeout: float | aiohttp.ClientTimeout | Unset = UNSET,
        deadline: float | Unset | None = UNSET,
        max_retries: int | Unset = UNSET,
        max_retry_after: float | Unset | None = UNSET,
        on_retry: OnRetry | Unset | None = UNSET,
    ) -> Settings:
        """Return these settings with the given ones replaced (and checked).

        Raises:
            InvalidRequestError: a new value is out of range.
        """
        given = {
            "timeout": timeout,
            "deadline": deadline,
            "max_retries": max_retries,
            "max_retry_after": max_retry_after,
            "on_retry": on_retry,
        }
        changes = {name: value for name, value in given.items() if value is not UNSET}
        return attrs.evolve(self, **changes) if changes else self
