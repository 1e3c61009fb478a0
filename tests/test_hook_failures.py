"""An ``on_retry`` hook that raises is logged and ignored: the call goes on.

The hook is user code; a bug in it (a metrics client that is down, a typo)
must never turn a rename that would succeed into a failure, nor replace the
real error of one that fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from faulty_servers import CID, FaultyServer, gateway_page, ok

from dify_async import (
    Conversation,
    InternalServerError,
    RenameRequest,
    RetryEvent,
)

KEY = "app-hook-failures-key"
USER = "user-42"
CALL_LIMIT = 10.0


class HookError(Exception):
    """What the broken hook raises."""


def broken_hooks(seen: list[RetryEvent]) -> dict[str, Callable[[RetryEvent], Any]]:
    def plain(event: RetryEvent) -> None:
        seen.append(event)
        raise HookError("metrics backend is down")

    async def asynchronous(event: RetryEvent) -> None:
        seen.append(event)
        await asyncio.sleep(0)
        raise HookError("metrics backend is down")

    return {"plain": plain, "async": asynchronous}


def hook_failures_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The library's log records that report a failed hook."""
    return [
        record
        for record in caplog.records
        if record.name.startswith("dify_async")
        and (
            (record.exc_info is not None and isinstance(record.exc_info[1], HookError))
            or "on_retry" in record.getMessage()
        )
    ]


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_a_raising_hook_is_logged_and_the_call_succeeds(
    new_client, caplog, no_retry_wait, kind
):
    """502 then 200 with a hook that raises: the rename succeeds, one log line."""
    caplog.set_level(logging.DEBUG)
    seen: list[RetryEvent] = []
    async with FaultyServer(gateway_page(502), ok) as server:
        client = new_client(server.base_url, on_retry=broken_hooks(seen)[kind])
        call = client.rename_conversation(CID, user=USER, name="Trip plans")
        conversation = await asyncio.wait_for(call, CALL_LIMIT)
    assert isinstance(conversation, Conversation)
    assert conversation.name == "Trip plans"
    assert server.attempts == 2
    [event] = seen
    assert isinstance(event, RetryEvent)
    assert event.attempt == 1
    assert event.conversation_id == CID
    assert isinstance(event.error, InternalServerError)
    assert event.error.status_code == 502
    assert event.method == "POST"
    assert CID in event.url
    [record] = hook_failures_logged(caplog)
    assert record.levelno >= logging.WARNING


@pytest.mark.parametrize("kind", ["plain", "async"])
async def test_a_raising_hook_never_replaces_the_real_error(
    new_client, caplog, no_retry_wait, kind
):
    """Every attempt fails and the hook raises each time: the 502 is raised."""
    caplog.set_level(logging.DEBUG)
    seen: list[RetryEvent] = []
    async with FaultyServer(gateway_page(502)) as server:
        hook = broken_hooks(seen)[kind]
        client = new_client(server.base_url, max_retries=2, on_retry=hook)
        call = client.rename_conversation(CID, user=USER, name="Trip plans")
        with pytest.raises(InternalServerError) as err:
            await asyncio.wait_for(call, CALL_LIMIT)
    assert err.value.attempts == server.attempts == 3
    assert [event.attempt for event in seen] == [1, 2]
    assert len(hook_failures_logged(caplog)) == 2


async def test_a_raising_hook_set_through_with_options(
    new_client, caplog, no_retry_wait
):
    """A with_options(on_retry=...) view with a broken hook still renames."""
    seen: list[RetryEvent] = []
    async with FaultyServer(gateway_page(503), ok) as server:
        client = new_client(server.base_url)
        view = client.with_options(on_retry=broken_hooks(seen)["plain"])
        call = view.rename_conversation(CID, user=USER, name="Trip plans")
        conversation = await asyncio.wait_for(call, CALL_LIMIT)
    assert conversation.name == "Trip plans"
    assert len(seen) == 1
    assert len(hook_failures_logged(caplog)) == 1


async def test_a_raising_hook_in_a_batch_costs_no_outcome(
    new_client, caplog, no_retry_wait
):
    """rename_many with a broken hook: every request still gets its conversation."""
    seen: list[RetryEvent] = []
    requests = [RenameRequest(CID, USER, f"Name {n}") for n in range(10)]
    async with FaultyServer(gateway_page(502), gateway_page(503), ok) as server:
        client = new_client(server.base_url, on_retry=broken_hooks(seen)["async"])
        outcomes = await asyncio.wait_for(
            client.rename_many(requests, concurrency=4), CALL_LIMIT
        )
    assert [getattr(o, "name", o) for o in outcomes] == [r.name for r in requests]
    assert len(seen) == 2
    assert server.attempts == 12
