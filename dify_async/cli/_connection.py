"""The client the commands talk to Dify with, built from the options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dify_async import AsyncDifyClient, InvalidRequestError, RetryEvent

from ._messages import UsageError, in_cli_terms

__all__ = ["make_client"]


def make_client(
    args: argparse.Namespace,
    *,
    max_rate: float | None = None,
    connections: int = 100,
    on_retry: Callable[[RetryEvent], object] | None = None,
) -> AsyncDifyClient:
    """Build the client from ``--api-key``, ``--base-url`` and their kin.

    Building it sends nothing: the batch builds one up front to check the
    options, and drops it.

    Args:
        args: The parsed command line.
        max_rate: At most this many requests per second.
        connections: The connection pool's size.
        on_retry: Called before each retry wait.

    Returns:
        The client, not yet opened.

    Raises:
        UsageError: No key, or an option the client refuses (the message names
            the option, never the key).
    """
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    try:
        return AsyncDifyClient(
            args.api_key or None,  # then DIFY_API_KEY, as the client reads it
            base_url=args.base_url or None,
            max_retries=args.max_retries,
            max_rate=max_rate,
            connection_limit=connections,
            on_retry=on_retry,
            **options,
        )
    except InvalidRequestError as exc:  # its message never holds the key
        raise UsageError(in_cli_terms(exc.message)) from None
