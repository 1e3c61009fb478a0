"""A borrowed aiohttp session: refused when it carries credentials, else kept.

A session passed as ``session=`` belongs to the caller, who may have set it up
for other APIs: default credentials (refused at construction, since they would
fight with the API key), a User-Agent of their own (kept, with the library's
token appended), default headers or settings that would spoil a rename
(overridden for the rename only).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator

import aiohttp
import pytest
from faulty_servers import CID, refused_base_url
from hostile_servers import HostileServer

from dify_async import AsyncDifyClient, InvalidRequestError, NotFoundError
from dify_async.testing import FakeDifyServer

KEY = "app-borrowed-sessions-key"
OTHER_SECRET = "other-service-Secret-0xC0FFEE"
USER = "user-42"
CALL_LIMIT = 10.0


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    """A server that answers 200 and records the requests' headers."""
    async with HostileServer() as running:
        yield running


async def rename(client: AsyncDifyClient, cid: str = CID) -> object:
    call = client.rename_conversation(cid, user=USER, name="Trip plans")
    return await asyncio.wait_for(call, CALL_LIMIT)


# -- credentials are refused at construction --------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"auth": ("someone", OTHER_SECRET)}, "auth"),
        ({"headers": {"Authorization": f"Bearer {OTHER_SECRET}"}}, "Authorization"),
        ({"headers": {"authorization": f"Basic {OTHER_SECRET}"}}, "Authorization"),
    ],
    ids=["basic-auth", "authorization-header", "lower-case-header"],
)
async def test_a_session_with_credentials_is_refused_at_construction(
    server, settings, named
):
    """auth= or a default Authorization header: InvalidRequestError, named."""
    if "auth" in settings:
        with warnings.catch_warnings():
            # aiohttp 3.14 deprecates BasicAuth; users of 3.10 to 3.13 pass it.
            warnings.simplefilter("ignore", DeprecationWarning)
            session = aiohttp.ClientSession(auth=aiohttp.BasicAuth(*settings["auth"]))
    else:
        session = aiohttp.ClientSession(**settings)
    async with session:
        with pytest.raises(InvalidRequestError) as err:
            AsyncDifyClient(KEY, base_url=server.base_url, session=session)
        assert not session.closed
    assert named.lower() in str(err.value).lower()
    assert OTHER_SECRET not in str(err.value)
    assert OTHER_SECRET not in repr(err.value)
    assert server.attempts == 0


# -- what is kept, what is overridden ---------------------------------------------


async def test_the_sessions_user_agent_is_kept_and_ours_appended(server):
    """User-Agent 'mybot/1.0' on the session: sent as 'mybot/1.0 ... dify-async/'."""
    headers = {"User-Agent": "mybot/1.0"}
    async with aiohttp.ClientSession(headers=headers) as session:
        client = AsyncDifyClient(KEY, base_url=server.base_url, session=session)
        await rename(client)
        await client.close()
    [request] = server.requests
    agent = request.headers["user-agent"]
    assert agent.startswith("mybot/1.0 "), agent
    assert "dify-async/" in agent
    assert agent.count("dify-async/") == 1


async def test_an_own_session_sends_only_the_librarys_user_agent(server):
    """Without a borrowed session the User-Agent starts with dify-async/."""
    async with AsyncDifyClient(KEY, base_url=server.base_url) as client:
        await rename(client)
    [request] = server.requests
    assert request.headers["user-agent"].startswith("dify-async/")
    assert request.headers["authorization"] == f"Bearer {KEY}"


async def test_session_defaults_cannot_spoil_the_rename():
    """A session sending text/plain and Accept: text/html still renames (no 415)."""
    headers = {"Content-Type": "text/plain", "Accept": "text/html"}
    async with FakeDifyServer() as fake, aiohttp.ClientSession(headers=headers) as s:
        cid = fake.add_conversation(user=USER)
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url, session=s)
        conversation = await rename(client, cid)
        await client.close()
    assert getattr(conversation, "name", None) == "Trip plans"


async def test_a_session_that_raises_for_status_still_gets_dify_errors():
    """raise_for_status=True on the session: a 404 is still a NotFoundError."""
    async with (
        FakeDifyServer() as fake,
        aiohttp.ClientSession(raise_for_status=True) as session,
    ):
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url, session=session)
        with pytest.raises(NotFoundError) as err:
            await rename(client)  # no such conversation
        await client.close()
    assert err.value.code == "not_found"


async def test_the_sessions_base_url_does_not_redirect_renames(server):
    """A session made with its own base_url: renames still go to the client's."""
    async with aiohttp.ClientSession(base_url=refused_base_url() + "/") as session:
        client = AsyncDifyClient(KEY, base_url=server.base_url, session=session)
        await rename(client)
        await client.close()
    assert server.attempts == 1
