"""Test support: a fake Dify server, fault injection, and instant retries.

Run your own bot's tests against :class:`FakeDifyServer` instead of a real
Dify, inject the faults real deployments produce, and make retry waits instant::

    from dify_async.testing import FakeDifyServer, instant_retries

    async with FakeDifyServer() as server:
        conversation_id = server.add_conversation(user="user-42", messages=["Hi"])
        async with AsyncDifyClient(server.api_key, base_url=server.base_url) as client:
            ...

With pytest, the ``dify_server`` fixture gives a running server (it is
registered automatically when dify_async is installed).

The server module (and :mod:`aiohttp.web` with it) is imported on first use,
so that loading the pytest plugin stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dify_async._retry import instant_retries, set_instant_retries

if TYPE_CHECKING:
    from ._fake_server import FakeDifyServer, Fault, StoredConversation

__all__ = [
    "FakeDifyServer",
    "Fault",
    "StoredConversation",
    "instant_retries",
    "set_instant_retries",
]

_SERVER_NAMES = frozenset({"FakeDifyServer", "Fault", "StoredConversation"})


def __getattr__(name: str) -> object:
    if name in _SERVER_NAMES:
        from . import _fake_server  # noqa: PLC0415  (imported on first use)

        return getattr(_fake_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
