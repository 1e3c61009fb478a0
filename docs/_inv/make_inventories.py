"""Write the intersphinx inventories the documentation links against.

The documentation is built without network access, so Sphinx cannot fetch
``objects.inv`` from docs.python.org and docs.aiohttp.org. This script writes
small inventories in Sphinx's format (version 2, zlib-compressed) that list the
names the pages and docstrings refer to, each with its address on the real
site. ``conf.py`` points intersphinx at the files; the links in the built
pages go to the real documentation.

When a page starts referring to another Python or aiohttp name, the build
(``-n``) reports it: add the name below and run
``python docs/_inv/make_inventories.py``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, domain:role, page and anchor on the project's site; "$" is the name)
PYTHON = [
    # modules
    ("asyncio", "py:module", "library/asyncio.html#module-$"),
    ("contextlib", "py:module", "library/contextlib.html#module-$"),
    ("logging", "py:module", "library/logging.html#module-$"),
    ("ssl", "py:module", "library/ssl.html#module-$"),
    ("threading", "py:module", "library/threading.html#module-$"),
    ("uuid", "py:module", "library/uuid.html#module-$"),
    # built-in types and constants
    ("None", "py:data", "library/constants.html#$"),
    ("True", "py:data", "library/constants.html#$"),
    ("False", "py:data", "library/constants.html#$"),
    ("bool", "py:class", "library/functions.html#$"),
    ("bytes", "py:class", "library/stdtypes.html#$"),
    ("dict", "py:class", "library/stdtypes.html#$"),
    ("float", "py:class", "library/functions.html#$"),
    ("int", "py:class", "library/functions.html#$"),
    ("list", "py:class", "library/stdtypes.html#$"),
    ("object", "py:class", "library/functions.html#$"),
    ("str", "py:class", "library/stdtypes.html#$"),
    ("tuple", "py:class", "library/stdtypes.html#$"),
    ("type", "py:class", "library/functions.html#$"),
    # built-in exceptions
    ("BaseException", "py:exception", "library/exceptions.html#$"),
    ("Exception", "py:exception", "library/exceptions.html#$"),
    ("RuntimeError", "py:exception", "library/exceptions.html#$"),
    ("TimeoutError", "py:exception", "library/exceptions.html#$"),
    ("TypeError", "py:exception", "library/exceptions.html#$"),
    ("ValueError", "py:exception", "library/exceptions.html#$"),
    ("OSError", "py:exception", "library/exceptions.html#$"),
    # asyncio
    ("asyncio.AbstractEventLoop", "py:class", "library/asyncio-eventloop.html#$"),
    ("asyncio.CancelledError", "py:exception", "library/asyncio-exceptions.html#$"),
    ("asyncio.Task", "py:class", "library/asyncio-task.html#$"),
    ("asyncio.Task.cancel", "py:method", "library/asyncio-task.html#$"),
    ("asyncio.TimeoutError", "py:exception", "library/asyncio-exceptions.html#$"),
    ("asyncio.gather", "py:function", "library/asyncio-task.html#$"),
    ("asyncio.run", "py:function", "library/asyncio-runner.html#$"),
    ("asyncio.timeout", "py:function", "library/asyncio-task.html#$"),
    ("asyncio.wait_for", "py:function", "library/asyncio-task.html#$"),
    # collections
    ("collections.Counter", "py:class", "library/collections.html#$"),
    ("collections.abc.AsyncGenerator", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.AsyncIterable", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.AsyncIterator", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Awaitable", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Callable", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Iterable", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Mapping", "py:class", "library/collections.abc.html#$"),
    ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$"),
    # contextlib
    ("contextlib.aclosing", "py:class", "library/contextlib.html#$"),
    # datetime
    ("datetime.datetime", "py:class", "library/datetime.html#$"),
    # logging
    ("logging.Logger", "py:class", "library/logging.html#$"),
    # ssl
    ("ssl.SSLContext", "py:class", "library/ssl.html#$"),
    ("ssl.SSLCertVerificationError", "py:exception", "library/ssl.html#$"),
    # typing
    ("typing.Any", "py:data", "library/typing.html#$"),
    # uuid
    ("uuid.UUID", "py:class", "library/uuid.html#$"),
]

AIOHTTP = [
    ("aiohttp", "py:module", "client_reference.html#module-$"),
    ("aiohttp.web", "py:module", "web_reference.html#module-$"),
    ("aiohttp.BaseConnector", "py:class", "client_reference.html#$"),
    ("aiohttp.ClientConnectorCertificateError", "py:class", "client_reference.html#$"),
    ("aiohttp.ClientError", "py:class", "client_reference.html#$"),
    ("aiohttp.ClientSession", "py:class", "client_reference.html#$"),
    ("aiohttp.ClientSession.close", "py:method", "client_reference.html#$"),
    ("aiohttp.ClientTimeout", "py:class", "client_reference.html#$"),
    ("aiohttp.TCPConnector", "py:class", "client_reference.html#$"),
    ("aiohttp.web.AppKey", "py:class", "web_reference.html#$"),
    ("aiohttp.web.Application", "py:class", "web_reference.html#$"),
    ("aiohttp.web.Application.cleanup_ctx", "py:attribute", "web_reference.html#$"),
]


def write(
    path: Path, project: str, version: str, entries: list[tuple[str, str, str]]
) -> None:
    """Write one inventory file."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = "".join(f"{name} {role} 1 {uri} -\n" for name, role, uri in sorted(entries))
    path.write_bytes(header.encode() + zlib.compress(lines.encode(), 9))


if __name__ == "__main__":
    write(HERE / "python.inv", "Python", "3", PYTHON)
    write(HERE / "aiohttp.inv", "aiohttp", "3.13", AIOHTTP)
