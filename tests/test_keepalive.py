"""Stale keep-alive connections: no failure, and no request processed twice.

Servers close idle keep-alive connections without notice (gunicorn after a
few seconds, nginx after a minute), so a pooled connection can die just as the
client reuses it. An explicit rename may simply be retried; an
``auto_generate`` rename costs an LLM call, so it must never reach the server
twice. These servers answer correctly, without ``Connection: close``, and then
close the connection 20 ms later, at once, or after 50 ms of idleness; the
client renames 30 times in a row with pauses around those windows.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from faulty_servers import CID, ok, reset
from hostile_servers import HostileServer

from dify_async import APIConnectionError, AsyncDifyClient, Conversation, DifyError

KEY = "app-keepalive-key"
USER = "user-42"
RENAMES = 30
PAUSES = (0.0, 0.005, 0.015, 0.019, 0.02, 0.021, 0.03, 0.045, 0.05, 0.055, 0.1)
"""Seconds between renames: on both sides of each server's closing window."""
CALL_LIMIT = 10.0

STALE_SERVERS: dict[str, dict[str, Any]] = {
    "closes-20ms-after-answer": {"close_after_answer": 0.02},
    "closes-right-after-answer": {"close_after_answer": 0.0},
    "closes-after-50ms-idle": {"idle_timeout": 0.05},
}


async def rename(client: AsyncDifyClient, **kwargs: Any) -> Conversation:
    if not kwargs.get("auto_generate"):
        kwargs.setdefault("name", "Trip plans")
    call = client.rename_conversation(CID, user=USER, **kwargs)
    return await asyncio.wait_for(call, CALL_LIMIT)


async def rename_in_a_row(client: AsyncDifyClient, **kwargs: Any) -> list[DifyError]:
    """RENAMES renames one after the other, pausing between; return the failures."""
    failures: list[DifyError] = []
    for pause in itertools.islice(itertools.cycle(PAUSES), RENAMES):
        try:
            await rename(client, **kwargs)
        except DifyError as error:
            failures.append(error)
        await asyncio.sleep(pause)
    return failures


@pytest.mark.parametrize("settings", STALE_SERVERS.values(), ids=STALE_SERVERS)
async def test_auto_generate_through_stale_connections(
    new_client, no_retry_wait, settings
):
    """30 auto_generate renames: 0 failures, exactly 30 processed (none twice)."""
    async with HostileServer(ok, **settings) as server:
        client = new_client(server.base_url)
        failures = await rename_in_a_row(client, auto_generate=True)
    assert [error.label for error in failures] == []
    assert server.attempts == RENAMES


@pytest.mark.parametrize("settings", STALE_SERVERS.values(), ids=STALE_SERVERS)
async def test_explicit_names_through_stale_connections(
    new_client, no_retry_wait, settings
):
    """30 explicit-name renames through dying connections: 0 failures."""
    async with HostileServer(ok, **settings) as server:
        client = new_client(server.base_url)
        failures = await rename_in_a_row(client)
    assert [error.label for error in failures] == []
    assert server.attempts >= RENAMES


async def test_auto_generate_reset_on_a_reused_connection_is_not_retried(
    new_client, no_retry_wait
):
    """A reset after processing on a connection that served before: not retried."""
    async with HostileServer(ok, reset, ok) as server:
        client = new_client(server.base_url, max_retries=5)
        await rename(client)  # leaves a pooled keep-alive connection
        with pytest.raises(APIConnectionError) as err:
            await rename(client, auto_generate=True)
    assert err.value.request_sent is True
    assert err.value.attempts == 1
    assert server.attempts == 2  # one each: the auto_generate was processed once
