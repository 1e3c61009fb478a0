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
so that loading the pytest plugin stays cheap. ``python -m dify_async.testing``
serves a fake Dify on its own, for manual tests and other languages.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

from dify_async._retry import instant_retries, set_instant_retries

if TYPE_CHECKING:
    from ._faults import Fault
    from ._rules import StoredConversation
    from ._server import FakeDifyServer

__all__ = [
    "FakeDifyServer",
    "Fault",
    "StoredConversation",
    "instant_retries",
    "set_instant_retries",
]

# The module that defines each lazily imported name.
_LAZY_NAMES: Final = {
    "FakeDifyServer": "._server",
    "Fault": "._faults",
    "StoredConversation": "._rules",
}


def __getattr__(name: str) -> object:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
