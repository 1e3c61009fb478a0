"""Nothing outside the DifyError tree escapes, whatever the server answers.

Deeply nested JSON, numbers too large for a float or a datetime, bytes that are
not UTF-8 in headers, statuses past 599, a body for another conversation, and
HTTP that is not HTTP: each one ends in the right :class:`DifyError`, with a
short, printable message, and never disturbs the other renames of a batch.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
from faulty_servers import CID, conversation_body
from hostile_servers import (
    HostileServer,
    Step,
    by_conversation,
    compressed,
    inflating_gzip,
    ok,
    raw,
)

from dify_async import (
    APIResponseValidationError,
    APIStatusError,
    AsyncDifyClient,
    Conversation,
    DifyError,
    InternalServerError,
    NotFoundError,
    RenameRequest,
)

KEY = "app-hostile-answers-key"
USER = "user-42"
CALL_LIMIT = 20.0
"""No call in this file may take longer, whatever the client does."""
DEPTH = 100_000
SHORT = 1000
"""An error's body excerpt and message stay under this many characters."""
OTHER_CID = "0b5c4d27-93f4-4f0e-9a1b-6f1c1f9d2e10"

DEEP_LIST = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = b'{"a":' * DEPTH + b"1" + b"}" * DEPTH
HUGE_INTEGER = b"9" * DEPTH


def answer(
    status: int,
    body: bytes,
    *,
    content_type: str = "application/json",
    headers: tuple[bytes, ...] = (),
) -> Step:
    """Answer with these exact bytes (headers may hold any byte)."""
    head = [
        b"HTTP/1.1 %d Whatever" % status,
        b"Content-Type: " + content_type.encode(),
        *headers,
        b"Content-Length: %d" % len(body),
    ]
    return raw(b"\r\n".join(head) + b"\r\n\r\n" + body, then_close=False)


def with_field(name: str, value: bytes) -> bytes:
    """A valid conversation body whose field *name* holds the raw JSON *value*."""
    marker = "@@VALUE@@"
    text = conversation_body(**{name: marker}).decode()
    return text.replace(f'"{marker}"', value.decode()).encode()


def dify_error_with(status: int, extra: bytes) -> bytes:
    """A Dify error body with one more field holding the raw JSON *extra*."""
    return (
        b'{"code": "unknown", "message": "Internal Server Error", "status": %d, '
        b'"extra": %s}' % (status, extra)
    )


async def rename(client: AsyncDifyClient, cid: str = CID) -> Conversation:
    call = client.rename_conversation(cid, user=USER, name="Trip plans")
    return await asyncio.wait_for(call, CALL_LIMIT)


def assert_printable(error: DifyError) -> None:
    """str, repr and pickle of *error* work, are short, and encode as UTF-8."""
    for text in (str(error), repr(error), error.message):
        text.encode("utf-8")  # no lone surrogate from a raw byte
        assert len(text) < 4 * SHORT
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


# -- 2xx answers that attack the decoder ------------------------------------------

HOSTILE_SUCCESSES = {
    "deep-list": DEEP_LIST,
    "deep-object": DEEP_OBJECT,
    "deep-inputs": with_field("inputs", DEEP_OBJECT),
    "huge-float": b"1e999999",
    "huge-integer": HUGE_INTEGER,
    "created-at-huge-float": with_field("created_at", b"1e999999"),
    "created-at-minus-huge-float": with_field("created_at", b"-1e999999"),
    "created-at-huge-integer": with_field("created_at", HUGE_INTEGER),
    "created-at-nan": with_field("created_at", b"NaN"),
    "created-at-past-datetime": with_field("created_at", b"1e18"),
    "updated-at-before-datetime": with_field("updated_at", b"-1e18"),
    "inputs-huge-integer": with_field("inputs", b'{"n": ' + HUGE_INTEGER + b"}"),
}


@pytest.mark.parametrize("body", HOSTILE_SUCCESSES.values(), ids=HOSTILE_SUCCESSES)
async def test_a_hostile_success_is_a_validation_error(new_client, body):
    """A 200 that attacks the JSON decoder: APIResponseValidationError, at once."""
    async with HostileServer(answer(200, body), ok) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APIResponseValidationError) as err:
            await rename(client)
    assert err.value.status_code == 200
    assert err.value.attempts == server.attempts == 1
    assert_printable(err.value)


# -- error answers that attack the decoder ----------------------------------------

HOSTILE_ERROR_BODIES = {
    "deep-list": DEEP_LIST,
    "deep-object": DEEP_OBJECT,
    "huge-integer": HUGE_INTEGER,
    "huge-float": b"1e999999",
    "deep-field": dify_error_with(500, DEEP_LIST),
    "huge-integer-field": dify_error_with(500, HUGE_INTEGER),
    "huge-float-field": dify_error_with(500, b"1e999999"),
    "huge-float-message": b'{"code": "unknown", "message": 1e999999, "status": 500}',
    "huge-integer-status": b'{"code": "unknown", "message": "m", "status": '
    + HUGE_INTEGER
    + b"}",
}
UNPARSABLE = {"deep-list", "deep-object", "huge-integer", "deep-field"}
UNPARSABLE |= {"huge-integer-field", "huge-integer-status"}


@pytest.mark.parametrize(
    "name", list(HOSTILE_ERROR_BODIES), ids=list(HOSTILE_ERROR_BODIES)
)
@pytest.mark.parametrize(
    ("status", "error"), [(500, InternalServerError), (404, NotFoundError)]
)
async def test_a_hostile_error_body_keeps_the_status_error(
    new_client, no_retry_wait, name, status, error
):
    """An error whose body attacks the decoder is still the status's error."""
    async with HostileServer(answer(status, HOSTILE_ERROR_BODIES[name])) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(DifyError) as err:
            await rename(client)
    assert type(err.value) is error
    assert err.value.status_code == status
    assert err.value.attempts == server.attempts == (3 if status == 500 else 1)
    if name in UNPARSABLE:
        # The body could not be decoded: a safe, short excerpt instead.
        assert isinstance(err.value.body, str)
        assert len(err.value.body) <= SHORT
    assert_printable(err.value)


# -- headers and statuses ---------------------------------------------------------


async def test_a_redirect_to_a_location_that_is_not_utf8(new_client):
    """A 302 whose Location holds a raw 0xFF byte: APIStatusError, nothing raw."""
    step = answer(302, b"", headers=(b"Location: https://elsewhere.example/\xff/v1",))
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        with pytest.raises(APIStatusError) as err:
            await rename(client)
    assert type(err.value) is APIStatusError
    assert err.value.status_code == 302
    assert err.value.attempts == server.attempts == 1
    assert "\udcff" not in str(err.value)
    assert "\udcff" not in repr(err.value)
    assert_printable(err.value)


async def test_a_server_version_that_is_not_utf8(new_client, no_retry_wait):
    """An X-Version with raw bytes never makes the error unprintable."""
    step = answer(502, b"bad gateway", headers=(b"X-Version: 1.\xff\xfe",))
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        with pytest.raises(InternalServerError) as err:
            await rename(client)
    assert err.value.status_code == 502
    assert "\udcff" not in str(err.value)
    assert_printable(err.value)


@pytest.mark.parametrize("status", [600, 999])
async def test_statuses_past_599_are_plain_status_errors(new_client, status):
    """600 and 999 raise exactly APIStatusError (not a 5xx), not retried."""
    step = answer(status, b'{"message": "what"}')
    async with HostileServer(step, ok) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APIStatusError) as err:
            await rename(client)
    assert type(err.value) is APIStatusError
    assert err.value.status_code == status
    assert err.value.attempts == server.attempts == 1


# -- a body for another conversation ----------------------------------------------


@pytest.mark.parametrize(
    "wrong_id", [OTHER_CID, "not-a-uuid", ""], ids=["other", "not-uuid", "empty"]
)
async def test_a_success_for_another_conversation_is_refused(new_client, wrong_id):
    """A 200 naming another conversation: APIResponseValidationError, not retried."""
    step = answer(200, conversation_body(wrong_id))
    async with HostileServer(step, ok) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APIResponseValidationError) as err:
            await rename(client)
    assert err.value.attempts == server.attempts == 1


async def test_a_success_with_the_id_in_upper_case_is_the_same_conversation(
    new_client,
):
    """An upper-case spelling of the same UUID is accepted, as lower case."""
    step = answer(200, conversation_body(CID.upper()))
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        conversation = await rename(client)
    assert conversation.id == CID


# -- HTTP that is not quite HTTP --------------------------------------------------

WEIRD_ANSWERS: dict[str, Step] = {
    "nothing": raw(b""),
    "not-http": raw(b"hello there\r\n\r\n"),
    "status-not-a-number": raw(b"HTTP/1.1 abc Nope\r\nContent-Length: 0\r\n\r\n"),
    "http-2-status-line": raw(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    "header-without-colon": raw(b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n"),
    "header-too-long": raw(
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n"
    ),
    "negative-length": raw(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n"),
    "two-lengths": raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"
    ),
    "bad-chunk-size": raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
    "gzip-that-is-not": compressed(200, b"this is not gzip at all", "gzip"),
    "deflate-that-is-not": compressed(500, b"this is not deflate", "deflate"),
    "unknown-encoding": compressed(200, conversation_body(), "x-unheard-of"),
    "brotli-garbage": compressed(200, b"\xff\xff\xff\xff", "br"),
    "zstd-garbage": compressed(200, b"\xff\xff\xff\xff", "zstd"),
    "bogus-charset-200": answer(
        200, b"<p>ok</p>", content_type="text/html; charset=x-bogus"
    ),
    "bogus-charset-500": answer(
        500, b"<p>oops</p>", content_type="text/html; charset=x-bogus"
    ),
    "utf16-json": answer(200, conversation_body().decode().encode("utf-16")),
    "bom-json": answer(200, b"\xef\xbb\xbf" + conversation_body()),
    "invalid-utf8-json": answer(200, b'{"id": "\xff\xfe", "name": "\xc3"}'),
    "lone-surrogate-escape": answer(200, with_field("name", b'"\\ud800"')),
    "informational-then-ok": raw(
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d"
        b"\r\n\r\n%s" % (len(conversation_body()), conversation_body()),
        then_close=False,
    ),
    "length-longer-than-body": raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + conversation_body()
    ),
}


@pytest.mark.parametrize("step", WEIRD_ANSWERS.values(), ids=WEIRD_ANSWERS)
async def test_weird_http_ends_in_a_conversation_or_a_dify_error(new_client, step):
    """Malformed or odd HTTP: a Conversation or a DifyError, never anything else."""
    async with HostileServer(step) as server:
        client = new_client(server.base_url, max_retries=0)
        try:
            outcome: object = await rename(client)
        except DifyError as error:
            outcome = error
            assert_printable(error)
    assert isinstance(outcome, Conversation | DifyError)
    assert server.attempts <= 1


# -- one hostile answer in a batch ------------------------------------------------

BATCH_HOSTILES: dict[str, Step] = {
    "deep-200": answer(200, DEEP_LIST),
    "deep-500": answer(500, DEEP_OBJECT),
    "huge-200": answer(200, with_field("created_at", b"1e999999")),
    "redirect-not-utf8": answer(302, b"", headers=(b"Location: /\xff",)),
    "status-600": answer(600, b""),
    "not-http": raw(b"HTTP/1.1 abc\r\n\r\n"),
    "gzip-bomb-200": compressed(200, inflating_gzip, "gzip"),
}
BATCH_IDS = [f"{n:08x}-93f4-4f0e-9a1b-6f1c1f9d2e10" for n in range(10)]
VICTIM = 6


def batch() -> list[RenameRequest]:
    return [RenameRequest(cid, USER, f"Name {n}") for n, cid in enumerate(BATCH_IDS)]


def assert_one_victim(outcomes: dict[str, object]) -> None:
    """Only the hostile conversation failed (with a DifyError); the rest landed."""
    assert sorted(outcomes) == sorted(BATCH_IDS)
    for n, cid in enumerate(BATCH_IDS):
        outcome = outcomes[cid]
        if n == VICTIM:
            assert isinstance(outcome, DifyError), outcome
        else:
            assert isinstance(outcome, Conversation), outcome
            assert (outcome.id, outcome.name) == (cid, f"Name {n}")


@pytest.mark.parametrize("hostile", BATCH_HOSTILES.values(), ids=BATCH_HOSTILES)
async def test_rename_many_gives_every_request_one_outcome(
    new_client, no_retry_wait, hostile
):
    """One hostile answer in rename_many: one error, nine conversations."""
    step = by_conversation({BATCH_IDS[VICTIM]: hostile}, default=ok)
    async with HostileServer(step) as server:
        client = new_client(server.base_url)
        results = await asyncio.wait_for(
            client.rename_many(batch(), concurrency=4), CALL_LIMIT
        )
    assert len(results) == 10
    assert_one_victim(dict(zip(BATCH_IDS, results, strict=True)))


@pytest.mark.parametrize("hostile", BATCH_HOSTILES.values(), ids=BATCH_HOSTILES)
async def test_rename_stream_yields_every_request(new_client, no_retry_wait, hostile):
    """One hostile answer in rename_stream: all ten pairs are yielded."""
    step = by_conversation({BATCH_IDS[VICTIM]: hostile}, default=ok)
    async with HostileServer(step) as server:
        client = new_client(server.base_url)

        async def collect() -> list[tuple[RenameRequest, object]]:
            return [pair async for pair in client.rename_stream(batch(), concurrency=4)]

        pairs = await asyncio.wait_for(collect(), CALL_LIMIT)
    assert len(pairs) == 10
    assert_one_victim({request.conversation_id: outcome for request, outcome in pairs})
