"""Pytest plugin that provides the ``dify_server`` fixture.

It is registered through the ``pytest11`` entry point of the ``dify-async``
distribution, so installing the package is enough to use the fixture. The
module only imports pytest: the fake server is imported when a test asks for
the fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dify_async.testing._server import FakeDifyServer

__all__ = ["dify_server"]


@pytest.fixture
def dify_server() -> Iterator[FakeDifyServer]:
    """A running fake Dify server, fresh for each test.

    The server answers on ``127.0.0.1`` at a free port and is served from a
    background thread with its own event loop, so it works the same in plain
    synchronous tests and under the async test plugins that run asyncio
    (pytest-asyncio, pytest-aiohttp, anyio with its asyncio backend; the
    client needs asyncio, so not anyio's trio backend). Point the client at
    ``dify_server.base_url`` with ``dify_server.api_key``, seed conversations
    with :meth:`~dify_async.testing.FakeDifyServer.add_conversation` and inject
    faults with :meth:`~dify_async.testing.FakeDifyServer.inject_fault`.

    Yields:
        The started :class:`~dify_async.testing.FakeDifyServer`; it is stopped
        when the test ends.

    Example::

        async def test_rename(dify_server):
            cid = dify_server.add_conversation(user="u-1", messages=["Hi"])
            async with AsyncDifyClient(
                api_key=dify_server.api_key, base_url=dify_server.base_url
            ) as client:
                conv = await client.rename_conversation(cid, name="A", user="u-1")
            assert dify_server.get_conversation(cid).name == "A"
    """
    from dify_async.testing._server import FakeDifyServer  # noqa: PLC0415

    server = FakeDifyServer()
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_thread()
