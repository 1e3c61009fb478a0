"""Text that is not valid Unicode never leaves the client.

A lone surrogate (``"\\ud800"``) is a valid Python ``str`` but not valid
Unicode: Dify cannot store it (400 ``invalid_param``), and as a header value
it cannot even be encoded. The client refuses it before sending, naming the
field, and its error stays printable.
"""

from __future__ import annotations

import asyncio

import pytest
from faulty_servers import CID
from hostile_servers import HostileServer

from dify_async import AsyncDifyClient, InvalidRequestError, RenameRequest

KEY = "app-hostile-inputs-key"
USER = "user-42"
CALL_LIMIT = 10.0

LONE_SURROGATES = ["\ud800", "Trip \udfff plans", "\udc80", "ok\ud83d"]


def assert_names(error: InvalidRequestError, field: str) -> None:
    assert field in str(error), str(error)
    str(error).encode("utf-8")  # printable: the surrogate is not echoed raw
    repr(error).encode("utf-8")


@pytest.mark.parametrize("text", LONE_SURROGATES, ids=ascii)
@pytest.mark.parametrize("field", ["name", "user"])
async def test_a_lone_surrogate_is_refused_before_sending(field, text):
    """A name or user holding a lone surrogate: InvalidRequestError, 0 requests."""
    arguments = {"name": "Trip plans", "user": USER, field: text}
    async with HostileServer() as server:
        async with AsyncDifyClient(KEY, base_url=server.base_url) as client:
            with pytest.raises(InvalidRequestError) as err:
                await asyncio.wait_for(
                    client.rename_conversation(CID, **arguments), CALL_LIMIT
                )
        assert server.attempts == 0
        assert server.connections_opened == 0
    assert_names(err.value, field)


@pytest.mark.parametrize("field", ["name", "user"])
def test_a_rename_request_with_a_lone_surrogate_is_refused(field):
    """RenameRequest (the rename_many input) refuses it when built."""
    arguments = {"name": "Trip plans", "user": USER, field: "\ud800"}
    with pytest.raises(InvalidRequestError) as err:
        RenameRequest(CID, **arguments)
    assert_names(err.value, field)


async def test_a_valid_astral_character_is_sent():
    """No false alarm: a real emoji (a valid surrogate pair in UTF-16) is fine."""
    async with HostileServer() as server:
        client = AsyncDifyClient(KEY, base_url=server.base_url)
        try:
            conversation = await asyncio.wait_for(
                client.rename_conversation(CID, user=USER, name="Trip \U0001f30d"),
                CALL_LIMIT,
            )
        finally:
            await client.close()
    assert conversation.name == "Trip \U0001f30d"
    [request] = server.requests
    assert request.json()["name"] == "Trip \U0001f30d"
