"""Shared fixtures: a fake Dify server in the test's loop, and a client for it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dify_async
from dify_async import AsyncDifyClient
from dify_async.testing import FakeDifyServer, instant_retries

if os.environ.get("DIFY_ASYNC_TEST_INSTALLED"):
    # The nox session tests the built wheel: make sure that is what runs.
    _source = Path(dify_async.__file__).resolve()
    assert "site-packages" in _source.parts, f"testing a checkout: {_source}"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDifyServer]:
    """A fake Dify server running in the test's event loop."""
    async with FakeDifyServer() as server:
        yield server


@pytest.fixture
async def client(fake: FakeDifyServer) -> AsyncIterator[AsyncDifyClient]:
    """A client for the fake server (default retry policy)."""
    async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as dify:
        yield dify


@pytest.fixture
def server(dify_server: FakeDifyServer) -> FakeDifyServer:
    """The plugin's fake server, on its own thread: a CLI child process reaches it."""
    return dify_server


@pytest.fixture
def no_retry_wait() -> Iterator[None]:
    """Make retry waits instant for the duration of a test."""
    with instant_retries():
        yield


@pytest.fixture
async def new_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[..., AsyncDifyClient]]:
    """A factory for clients of a test server, all closed when the test ends.

    Each client uses the test module's ``KEY``, so that a module can check
    that its own key never shows.
    """
    key: str = request.module.KEY
    made: list[AsyncDifyClient] = []

    def make(base_url: str, **kwargs: Any) -> AsyncDifyClient:
        client = AsyncDifyClient(key, base_url=base_url, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()
