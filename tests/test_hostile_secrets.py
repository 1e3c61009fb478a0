"""The API key never shows, even when the server echoes it back.

Each server here copies the request's ``Authorization`` header into its
answer: a JSON error (in the message and in another field), an HTML page, plain
text, a response header, a 2xx that is not a conversation, a redirect's
Location, a malformed status line or header. Whatever the client raises, the
key (bare, or as ``Bearer <key>``) appears in none of: ``str``, ``repr``,
``message``, ``body``, ``headers``, the pickle, the formatted traceback, any
log record at DEBUG, and any exception of the ``__cause__``/``__context__``
chain (``repr`` of each and of its ``__dict__``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import traceback
from collections.abc import Callable, Iterator

import pytest
from faulty_servers import CID, conversation_body
from hostile_servers import Connection, HostileServer, Request, Step, gzip_bytes

from dify_async import (
    APIResponseValidationError,
    APIStatusError,
    AsyncDifyClient,
    DifyError,
    InternalServerError,
    RenameRequest,
)

KEY = "app-Zq7SeCrEtKeY4echoTest9x"
SECRETS = (KEY, f"Bearer {KEY}", KEY.removeprefix("app-"))
"""The key, its header value, and its secret part on its own."""
USER = "user-42"
OTHER_CID = "0b5c4d27-93f4-4f0e-9a1b-6f1c1f9d2e10"
CALL_LIMIT = 20.0


def echo(
    status: int,
    body: Callable[[str], bytes] = lambda _: b"",
    *,
    content_type: str = "application/json",
    headers: Callable[[str], list[str]] = lambda _: [],
    status_line: Callable[[str], str] | None = None,
    close: bool = False,
) -> Step:
    """Answer with the request's Authorization value put where the callables say."""

    async def step(request: Request, connection: Connection) -> None:
        auth = request.headers.get("authorization", "")
        assert KEY in auth, "the client did not send its key: nothing to echo"
        data = body(auth)
        first = status_line(auth) if status_line else f"HTTP/1.1 {status} Whatever"
        lines = [
            first,
            f"Content-Type: {content_type}",
            *headers(auth),
            f"Content-Length: {len(data)}",
        ]
        await connection.send(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        if close:
            connection.close()

    return step


def token_of(auth: str) -> str:
    """The key alone, from an Authorization header value."""
    return auth.rsplit(maxsplit=1)[-1]


def dify_json(status: int, code: str) -> Callable[[str], bytes]:
    def body(auth: str) -> bytes:
        return json.dumps(
            {
                "code": code,
                "message": f"Access token is invalid: {auth}",
                "status": status,
                "received": {"Authorization": auth},
                "token": token_of(auth),
            }
        ).encode()

    return body


ECHOES: dict[str, tuple[Step, type[DifyError]]] = {
    "json-401": (echo(401, dify_json(401, "unauthorized")), APIStatusError),
    "json-400": (echo(400, dify_json(400, "invalid_param")), APIStatusError),
    "json-500-retried": (echo(500, dify_json(500, "unknown")), InternalServerError),
    "json-without-code": (
        echo(403, lambda auth: json.dumps({"error": auth}).encode()),
        APIStatusError,
    ),
    "html-502": (
        echo(
            502,
            lambda auth: (
                f"<html><head><title>502 {auth}</title></head>"
                f"<body><h1>Bad Gateway</h1><pre>Authorization: {auth}</pre></body>"
                "</html>"
            ).encode(),
            content_type="text/html",
        ),
        InternalServerError,
    ),
    "text-503": (
        echo(
            503,
            lambda auth: f"upstream refused Authorization: {auth}\n".encode(),
            content_type="text/plain",
        ),
        InternalServerError,
    ),
    "text-404": (
        echo(
            404,
            lambda auth: f"no route for token {token_of(auth)}".encode(),
            content_type="text/plain",
        ),
        APIStatusError,
    ),
    "headers-500": (
        echo(
            500,
            lambda _: b'{"code": "unknown", "message": "x", "status": 500}',
            headers=lambda auth: [
                f"X-Echo: {auth}",
                f"WWW-Authenticate: {auth}",
                f"X-Version: {token_of(auth)}",
                f"Set-Cookie: session={token_of(auth)}",
            ],
        ),
        InternalServerError,
    ),
    "headers-429": (
        echo(
            429,
            lambda _: b'{"message": "slow down"}',
            headers=lambda auth: [f"Retry-After: {auth}", f"X-Echo: {auth}"],
        ),
        APIStatusError,
    ),
    "2xx-json-not-a-conversation": (
        echo(200, lambda auth: json.dumps({"echo": auth, "ok": True}).encode()),
        APIResponseValidationError,
    ),
    "2xx-text": (
        echo(200, lambda auth: f"you sent {auth}".encode(), content_type="text/plain"),
        APIResponseValidationError,
    ),
    "2xx-headers": (
        echo(
            200,
            lambda _: b"[]",
            headers=lambda auth: [f"X-Echo: {auth}", f"X-Version: {auth}"],
        ),
        APIResponseValidationError,
    ),
    "2xx-another-conversation": (
        echo(
            200,
            lambda auth: conversation_body(OTHER_CID, name=auth),
        ),
        APIResponseValidationError,
    ),
    "2xx-bad-types": (
        echo(
            200,
            lambda auth: conversation_body(created_at=auth, inputs=auth),
        ),
        APIResponseValidationError,
    ),
    "header-name": (
        echo(
            500,
            lambda _: b"oops",
            content_type="text/plain",
            headers=lambda auth: [f"{token_of(auth)}: yes", f"X-{token_of(auth)}: 1"],
        ),
        InternalServerError,
    ),
    "reason-phrase": (
        echo(500, status_line=lambda auth: f"HTTP/1.1 500 {auth}"),
        InternalServerError,
    ),
    "json-unicode-escapes": (
        echo(
            400,
            lambda auth: (
                '{"code": "invalid_param", "status": 400, "message": "'
                + "".join(f"\\u{ord(c):04x}" for c in auth)
                + '"}'
            ).encode(),
        ),
        APIStatusError,
    ),
    "2xx-json-unicode-escapes": (
        echo(
            200,
            lambda auth: (
                '{"echo": "' + "".join(f"\\u{ord(c):04x}" for c in auth) + '"}'
            ).encode(),
        ),
        APIResponseValidationError,
    ),
    "json-utf16": (
        echo(
            500,
            lambda auth: json.dumps(
                {"code": "unknown", "message": auth, "status": 500}
            ).encode("utf-16"),
        ),
        InternalServerError,
    ),
    "2xx-json-utf16": (
        echo(200, lambda auth: json.dumps({"echo": auth}).encode("utf-16")),
        APIResponseValidationError,
    ),
    "2xx-gzip": (
        echo(
            200,
            lambda auth: gzip_bytes(json.dumps({"echo": auth}).encode()),
            headers=lambda _: ["Content-Encoding: gzip"],
        ),
        APIResponseValidationError,
    ),
    "html-entities": (
        echo(
            502,
            lambda auth: (
                "<html><head><title>"
                + "".join(f"&#{ord(c)};" for c in auth)
                + "</title></head></html>"
            ).encode(),
            content_type="text/html",
        ),
        InternalServerError,
    ),
    "redirect-percent-encoded": (
        echo(
            302,
            headers=lambda auth: [
                "Location: https://evil.example/v1/"
                + "".join(f"%{ord(c):02X}" for c in token_of(auth))
            ],
        ),
        APIStatusError,
    ),
    "redirect-query": (
        echo(
            302,
            headers=lambda auth: [
                f"Location: https://evil.example/v1?k={token_of(auth)}"
            ],
        ),
        APIStatusError,
    ),
    "redirect-path": (
        echo(
            307,
            headers=lambda auth: [
                f"Location: https://evil.example/{token_of(auth)}/v1"
            ],
        ),
        APIStatusError,
    ),
    "malformed-status-line": (
        echo(0, status_line=lambda auth: f"HTTP/1.1 abc {auth}", close=True),
        DifyError,
    ),
    "malformed-status-code": (
        echo(0, status_line=lambda auth: f"HTTP/1.1 2{auth} OK", close=True),
        DifyError,
    ),
    "malformed-header": (
        echo(200, headers=lambda auth: [f"X-Echo {auth}"], close=True),
        DifyError,
    ),
    "malformed-header-name": (
        echo(200, headers=lambda auth: [f"{auth}: yes"], close=True),
        DifyError,
    ),
    "header-too-long": (
        echo(200, headers=lambda auth: [f"X-Echo: {auth}{'=' * 20000}"], close=True),
        DifyError,
    ),
}


async def rename(client: AsyncDifyClient) -> object:
    call = client.rename_conversation(CID, user=USER, name="Trip plans")
    return await asyncio.wait_for(call, CALL_LIMIT)


def chain(error: BaseException) -> Iterator[BaseException]:
    """*error* and every exception reachable through __cause__ and __context__."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def exposed_texts(error: DifyError) -> Iterator[tuple[str, str]]:
    """(where, text) for every place a user, a log or a tracker could see."""
    yield "str", str(error)
    yield "repr", repr(error)
    yield "message", error.message
    yield "body", repr(getattr(error, "body", None))
    headers = getattr(error, "headers", None)
    if headers is not None:
        yield "headers", repr(dict(headers))
    yield "server_version", repr(getattr(error, "server_version", None))
    yield "url", repr(error.url)
    yield "traceback", "".join(traceback.format_exception(error))
    for n, link in enumerate(chain(error)):
        yield f"chain[{n}] repr", repr(link)
        yield f"chain[{n}] str", str(link)
        yield f"chain[{n}] args", repr(link.args)
        yield f"chain[{n}] __dict__", repr(getattr(link, "__dict__", {}))


def logged_texts(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[str, str]]:
    formatter = logging.Formatter()
    for n, record in enumerate(caplog.records):
        yield f"log[{n}] message", record.getMessage()
        yield f"log[{n}] args", repr(record.args)
        if record.exc_info:
            yield f"log[{n}] exc_info", formatter.formatException(record.exc_info)


def assert_no_secret(error: DifyError, caplog: pytest.LogCaptureFixture) -> None:
    for where, text in [*exposed_texts(error), *logged_texts(caplog)]:
        for secret in SECRETS:
            assert secret not in text, f"the key shows in {where}: {text[:500]!r}"
    pickled = pickle.dumps(error)
    for secret in SECRETS:
        assert secret.encode() not in pickled, "the key is in the pickle"


@pytest.mark.parametrize(("step", "expected"), ECHOES.values(), ids=ECHOES)
async def test_an_echoed_key_never_shows(
    new_client, no_retry_wait, caplog, step, expected
):
    """The server echoes Authorization; nothing the client exposes holds the key."""
    caplog.set_level(logging.DEBUG)
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(DifyError) as err:
            await rename(client)
    assert isinstance(err.value, expected)
    assert server.attempts >= 1
    assert_no_secret(err.value, caplog)


@pytest.mark.parametrize(("step", "expected"), ECHOES.values(), ids=ECHOES)
async def test_an_echoed_key_never_shows_in_a_batch(
    new_client, no_retry_wait, caplog, step, expected
):
    """The same echoes through rename_many: the outcomes hold no key either."""
    caplog.set_level(logging.DEBUG)
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=1)
        requests = [RenameRequest(CID, USER, "Trip plans")] * 2
        outcomes = await asyncio.wait_for(client.rename_many(requests), CALL_LIMIT)
    for outcome in outcomes:
        assert isinstance(outcome, expected)
        assert_no_secret(outcome, caplog)
