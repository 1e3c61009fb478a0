"""The client's public surface, used as applications use it, for mypy --strict.

Never run: ``assert_type`` and the ``type: ignore`` comments are checked by
mypy, which also fails on an ignore that is no longer needed.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from typing_extensions import assert_type

import dify_async
from dify_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncDifyClient,
    ClientClosedError,
    Conversation,
    DifyError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
    RenameRequest,
)

CONVERSATION_ID = "45701982-8118-4bc5-8e9b-64562b4555f2"


async def configure(session: aiohttp.ClientSession) -> None:
    async with AsyncDifyClient() as client:
        assert_type(client, AsyncDifyClient)
    AsyncDifyClient("app-key", base_url="https://dify.example.com/v1")
    AsyncDifyClient(
        timeout=aiohttp.ClientTimeout(total=30, sock_connect=3),
        deadline=60,
        max_retries=4,
        max_retry_after=30.0,
        max_rate=20,
        connection_limit=0,
        max_response_size=1 << 20,
        session=session,
    )
    AsyncDifyClient(timeout=5.0, deadline=None, max_rate=None)
    assert_type(client.base_url, str)
    assert_type(client.closed, bool)
    await client.close()

    AsyncDifyClient("app-key", "https://dify.example.com/v1")  # type: ignore[call-arg]
    AsyncDifyClient(timeout="5")  # type: ignore[arg-type]
    client.base_url = "x"  # type: ignore[misc]


async def rename(client: AsyncDifyClient) -> None:
    conversation = await client.rename_conversation(
        CONVERSATION_ID, name="Trip plans", user="user-42"
    )
    assert_type(conversation, Conversation)
    assert_type(conversation.id, str)
    assert_type(conversation.name, str)
    assert_type(conversation.inputs, dict[str, Any])
    assert_type(conversation.status, str)
    assert_type(conversation.introduction, str | None)
    assert_type(conversation.created_at, datetime | None)
    assert_type(conversation.updated_at, datetime | None)

    await client.rename_conversation(
        uuid.UUID(CONVERSATION_ID),
        auto_generate=True,
        user="user-42",
        timeout=aiohttp.ClientTimeout(total=90),
        deadline=120.0,
        max_retries=0,
    )

    conversation.name = "Renamed"  # type: ignore[misc]
    await client.rename_conversation(CONVERSATION_ID, name="x")  # type: ignore[call-arg]
    await client.rename_conversation(123, name="x", user="u")  # type: ignore[arg-type]
    await client.rename_conversation(CONVERSATION_ID, "x", "u")  # type: ignore[call-arg]


def requests() -> list[RenameRequest]:
    request = RenameRequest(conversation_id=CONVERSATION_ID, user="u", name="x")
    assert_type(request.conversation_id, str)
    assert_type(request.user, str)
    assert_type(request.name, str | None)
    assert_type(request.auto_generate, bool)
    request.name = "y"  # type: ignore[misc]
    return [
        request,
        RenameRequest(CONVERSATION_ID, "u", auto_generate=True),
        RenameRequest(uuid.UUID(CONVERSATION_ID), "u", "z"),
    ]


async def rename_many(client: AsyncDifyClient) -> None:
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))

    outcomes = await client.rename_many(requests(), concurrency=8, on_progress=progress)
    assert_type(outcomes, list[Conversation | DifyError])
    for outcome in outcomes:
        if isinstance(outcome, Conversation):
            assert_type(outcome, Conversation)
            assert_type(outcome.name, str)
        else:
            assert_type(outcome, DifyError)
            assert_type(outcome.message, str)
        if isinstance(outcome, APIStatusError):
            assert_type(outcome.status_code, int)
        elif isinstance(outcome, DifyError):
            assert_type(outcome, DifyError)
        else:
            assert_type(outcome, Conversation)

    renamed = [o for o in outcomes if isinstance(o, Conversation)]
    assert_type(renamed, list[Conversation])
    await client.rename_many(["not a request"])  # type: ignore[list-item]


async def rename_stream(client: AsyncDifyClient) -> None:
    async def from_a_database() -> AsyncIterator[RenameRequest]:
        for request in requests():
            yield request

    async for request, outcome in client.rename_stream(requests(), concurrency=4):
        assert_type(request, RenameRequest)
        assert_type(outcome, Conversation | DifyError)
        if not isinstance(outcome, DifyError):
            assert_type(outcome, Conversation)
    async for _, outcome in client.rename_stream(from_a_database()):
        assert_type(outcome, Conversation | DifyError)


async def handle_errors(client: AsyncDifyClient) -> str:
    try:
        await client.rename_conversation(CONVERSATION_ID, name="x", user="u")
    except NotFoundError as error:
        assert_type(error.code, str | None)
        assert_type(error.status_code, int)
        assert_type(error.message, str)
        assert_type(error.server_version, str | None)
        assert_type(error.headers, Mapping[str, str])
        assert_type(error.body, object)
        assert_type(error.attempts, int)
        assert_type(error.method, str | None)
        assert_type(error.url, str | None)
        return "gone"
    except RateLimitError as error:
        assert_type(error.retry_after, float | None)
    except APITimeoutError as error:
        assert_type(error.request_sent, bool)
    except APIConnectionError as error:
        assert_type(error.request_sent, bool)
    except (InvalidRequestError, ClientClosedError) as error:
        assert_type(error, InvalidRequestError | ClientClosedError)
        # The built-in bases are part of the contract.
        value_error: ValueError = InvalidRequestError("bad")
        runtime_error: RuntimeError = ClientClosedError("closed")
        del value_error, runtime_error
    except DifyError as error:
        return str(error)
    return "ok"


def version() -> str:
    return assert_type(dify_async.__version__, str)
