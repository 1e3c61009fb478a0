"""The client against servers that misbehave on purpose, over real sockets.

Every test states what the user sees (the exception type), how many attempts the
server saw, and how long the call took.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

import aiohttp
import pytest
from faulty_servers import (
    CID,
    KEY,
    Connection,
    FaultyServer,
    Request,
    conversation_json,
    dify_error,
    gateway_page,
    hang,
    http_date,
    ok,
    rate_limited,
    refused_base_url,
    reply,
    reset,
    trickle,
    wait_for_peer_close,
)

from dify_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AsyncDifyClient,
    ClientClosedError,
    Conversation,
    InternalServerError,
    RateLimitError,
)
from dify_async.testing import Fault

USER = "user-42"
SLACK = 0.6
"""Extra seconds allowed on a shared, noisy machine."""


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


@pytest.fixture
def stopwatch() -> Stopwatch:
    return Stopwatch()


def logged_waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [
        float(re.search(r" in ([\d.]+) s", r.getMessage())[1])  # type: ignore[index]
        for r in caplog.records
        if r.name == "dify_async" and r.levelno == logging.WARNING
    ]


async def rename(client: AsyncDifyClient, **kwargs: Any) -> Conversation:
    if not kwargs.get("auto_generate"):
        kwargs.setdefault("name", "Trip plans")
    return await client.rename_conversation(CID, user=USER, **kwargs)


# -- connection failures ----------------------------------------------------------


async def test_refused_port_is_retried_then_raised(
    new_client, stopwatch, no_retry_wait
):
    """A refused connection is retried, then raised with request_sent False."""
    client = new_client(refused_base_url(), max_retries=2)
    with pytest.raises(APIConnectionError) as caught:
        await rename(client)
    assert type(caught.value) is APIConnectionError
    assert caught.value.request_sent is False
    assert caught.value.attempts == 3
    assert "after 3 attempts" in str(caught.value)
    assert stopwatch.elapsed < SLACK


async def test_refused_port_retries_auto_generate(new_client, no_retry_wait):
    """An auto_generate rename is retried when the connection was never made."""
    client = new_client(refused_base_url(), max_retries=3)
    with pytest.raises(APIConnectionError) as caught:
        await rename(client, auto_generate=True)
    assert caught.value.attempts == 4


async def test_refused_port_backs_off_with_capped_jitter(new_client, stopwatch, caplog):
    """Backoff waits grow with full jitter under their caps, and are really slept."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    client = new_client(refused_base_url(), max_retries=2)
    with pytest.raises(APIConnectionError):
        await rename(client)
    waits = logged_waits(caplog)
    assert len(waits) == 2
    assert 0 <= waits[0] <= 0.5
    assert 0 <= waits[1] <= 1.0
    assert sum(waits) - 0.05 <= stopwatch.elapsed < sum(waits) + SLACK


async def test_reset_before_response_is_retried_for_a_name(new_client, no_retry_wait):
    """A reset before any response is retried for an explicit name, then succeeds."""
    async with FaultyServer(reset, reset, ok) as server:
        client = new_client(server.base_url, max_retries=2)
        conversation = await rename(client)
    assert conversation.name == "Trip plans"
    assert server.attempts == 3


async def test_reset_every_time_raises_after_all_attempts(new_client, no_retry_wait):
    """When every attempt is reset, the error says how many attempts were made."""
    async with FaultyServer(reset) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(APIConnectionError) as caught:
            await rename(client)
    assert caught.value.request_sent is True
    assert caught.value.attempts == server.attempts == 3


async def test_reset_is_not_repeated_for_auto_generate(new_client, no_retry_wait):
    """A reset after an auto_generate was sent is raised, never resent."""
    async with FaultyServer(reset, ok) as server:
        client = new_client(server.base_url, max_retries=5)
        with pytest.raises(APIConnectionError) as caught:
            await rename(client, auto_generate=True)
    assert caught.value.request_sent is True
    assert caught.value.attempts == server.attempts == 1


async def reset_mid_body(request: Request, connection: Connection) -> None:
    body = conversation_json(request)
    await connection.head(
        200, [("Content-Type", "application/json")], content_length=len(body)
    )
    await connection.send(body[: len(body) // 2])
    await asyncio.sleep(0.02)
    connection.reset()


async def closed_mid_body(request: Request, connection: Connection) -> None:
    body = conversation_json(request)
    await connection.head(
        200, [("Content-Type", "application/json")], content_length=len(body)
    )
    await connection.send(body[: len(body) // 2])
    connection.close()


@pytest.mark.parametrize("cut", [reset_mid_body, closed_mid_body])
async def test_cut_mid_body_is_retried_for_a_name(new_client, no_retry_wait, cut):
    """A body cut short (reset or early close) is a connection error, retried."""
    async with FaultyServer(cut, ok) as server:
        client = new_client(server.base_url)
        conversation = await rename(client)
    assert conversation.name == "Trip plans"
    assert server.attempts == 2


@pytest.mark.parametrize("cut", [reset_mid_body, closed_mid_body])
async def test_cut_mid_body_is_not_repeated_for_auto_generate(
    new_client, no_retry_wait, cut
):
    """A body cut short on an auto_generate is raised: the LLM already ran."""
    async with FaultyServer(cut, ok) as server:
        client = new_client(server.base_url)
        with pytest.raises(APIConnectionError) as caught:
            await rename(client, auto_generate=True)
    assert caught.value.attempts == server.attempts == 1


# -- 2xx bodies that are not a conversation ---------------------------------------


async def truncated_json(request: Request, connection: Connection) -> None:
    await connection.respond(200, conversation_json(request)[:-12])


@pytest.mark.parametrize(
    ("step", "shown"),
    [
        (truncated_json, "not JSON"),
        (reply(200, "<html><body>OK</body></html>", content_type="text/html"), "OK"),
        (reply(200, b"\xff\xfe\x00garbage"), "not JSON"),
        (reply(200, ""), "not JSON"),
        (reply(200, "[]"), "list"),
        (reply(200, '{"result": "success"}'), "id"),
        (reply(200, json.dumps({"id": 5, "name": None})), "body"),
    ],
    ids=["truncated", "html", "binary", "empty", "list", "dify-result", "types"],
)
async def test_2xx_that_is_not_a_conversation_is_never_retried(
    new_client, no_retry_wait, step, shown
):
    """A 2xx whose body is not a conversation raises at once, attempts 1."""
    async with FaultyServer(step, ok) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APIResponseValidationError) as caught:
            await rename(client)
    assert caught.value.status_code == 200
    assert shown in caught.value.message
    assert caught.value.attempts == server.attempts == 1


# -- status codes -----------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_html_pages_are_retried_then_raised(
    new_client, no_retry_wait, status
):
    """An nginx HTML 502/503/504 maps to InternalServerError after every retry."""
    async with FaultyServer(gateway_page(status)) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(InternalServerError) as caught:
            await rename(client)
    error = caught.value
    assert error.status_code == status
    assert error.code is None
    assert str(status) in error.message
    assert "<" not in error.message
    assert error.attempts == server.attempts == 3


async def test_gateway_errors_then_success(new_client, no_retry_wait):
    """A rename survives a 502 and a 503 from a gateway, then succeeds."""
    async with FaultyServer(gateway_page(502), gateway_page(503), ok) as server:
        client = new_client(server.base_url, max_retries=2)
        conversation = await rename(client)
    assert conversation.id == CID
    assert server.attempts == 3


@pytest.mark.parametrize(
    ("step", "attempts"),
    [
        (gateway_page(408), 3),
        (rate_limited(), 3),
        (dify_error(500, "unknown", "Internal Server Error"), 1),
        (gateway_page(502), 1),
        (gateway_page(503), 3),
        (gateway_page(504), 1),
        (hang, 1),
    ],
    ids=["408", "429", "500", "502", "503", "504", "read-timeout"],
)
async def test_auto_generate_is_retried_only_where_the_server_did_not_start(
    new_client, no_retry_wait, step, attempts
):
    """auto_generate is retried after 408/429/503, never after 500/502/504/timeouts."""
    async with FaultyServer(step) as server:
        client = new_client(server.base_url, max_retries=2, timeout=0.3)
        with pytest.raises((APIStatusError, APITimeoutError)) as caught:
            await rename(client, auto_generate=True)
    assert caught.value.attempts == server.attempts == attempts


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried_for_a_name(
    new_client, no_retry_wait, status
):
    """An explicit rename is retried on 408, 429, 500, 502, 503 and 504."""
    async with FaultyServer(dify_error(status, "whatever")) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(APIStatusError) as caught:
            await rename(client)
    assert caught.value.status_code == status
    assert caught.value.attempts == server.attempts == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (301, None),
        (400, "invalid_param"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (409, "conflict"),
        (413, None),
        (415, "unsupported_media_type"),
        (422, "unprocessable"),
        (501, None),
        (505, None),
    ],
)
async def test_other_statuses_are_never_retried(
    new_client, no_retry_wait, status, code
):
    """4xx other than 408/429, 3xx and unusual 5xx raise after one attempt."""
    step = (
        dify_error(status, code)
        if code
        else reply(status, "nope", [("Location", "https://x/")])
    )
    async with FaultyServer(step, ok) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APIStatusError) as caught:
            await rename(client)
    assert caught.value.status_code == status
    assert caught.value.code == code
    assert caught.value.attempts == server.attempts == 1


async def test_max_retries_per_call_overrides_the_client(new_client, no_retry_wait):
    """max_retries given to a call replaces the client's, both ways."""
    async with FaultyServer(gateway_page(502)) as server:
        client = new_client(server.base_url, max_retries=0)
        with pytest.raises(InternalServerError) as caught:
            await rename(client, max_retries=4)
        assert caught.value.attempts == server.attempts == 5
        client = new_client(server.base_url, max_retries=4)
        with pytest.raises(InternalServerError) as caught:
            await rename(client, max_retries=0)
        assert caught.value.attempts == 1
        assert server.attempts == 6


# -- Retry-After ------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [("Retry-After", "0.2"), ("retry-after-ms", "200"), ("Retry-After", " 0.2 ")],
    ids=["seconds", "milliseconds", "padded"],
)
async def test_429_retry_after_is_honoured(new_client, stopwatch, caplog, header):
    """A 429's Retry-After (seconds or ms) is waited exactly, then retried."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    async with FaultyServer(rate_limited(header), rate_limited(header), ok) as server:
        client = new_client(server.base_url, max_retries=2)
        await rename(client)
    assert server.attempts == 3
    assert logged_waits(caplog) == [0.2, 0.2]
    assert 0.38 <= stopwatch.elapsed < 0.4 + SLACK


async def test_503_retry_after_is_honoured(new_client, stopwatch):
    """A 503 with Retry-After waits as asked too."""
    step = reply(503, "busy", [("Retry-After", "0.3")], content_type="text/plain")
    async with FaultyServer(step, ok) as server:
        client = new_client(server.base_url)
        await rename(client)
    assert server.attempts == 2
    assert 0.28 <= stopwatch.elapsed < 0.3 + SLACK


async def test_429_retry_after_http_date_is_honoured(new_client, stopwatch, caplog):
    """A Retry-After HTTP date is waited for until that moment."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    date = http_date(2)  # whole seconds: between 1 and 2 s from now
    async with FaultyServer(rate_limited(("Retry-After", date)), ok) as server:
        client = new_client(server.base_url)
        await rename(client)
    assert server.attempts == 2
    [wait] = logged_waits(caplog)
    assert 0.9 <= wait <= 2.0
    assert wait - 0.05 <= stopwatch.elapsed < wait + SLACK


async def test_429_retry_after_in_the_past_retries_at_once(new_client, stopwatch):
    """A Retry-After date already past means no wait at all."""
    step = rate_limited(("Retry-After", http_date(-60)))
    async with FaultyServer(step, ok) as server:
        client = new_client(server.base_url)
        await rename(client)
    assert server.attempts == 2
    assert stopwatch.elapsed < 0.1 + SLACK


@pytest.mark.parametrize(
    ("header", "kwargs", "expected"),
    [
        (("Retry-After", "120"), {}, 120.0),
        (("Retry-After", "date"), {}, 3600.0),
        (("retry-after-ms", "90000"), {}, 90.0),
        (("Retry-After", "0.5"), {"max_retry_after": 0.1}, 0.5),
    ],
    ids=["seconds", "date", "milliseconds", "configured-cap"],
)
async def test_retry_after_above_the_cap_raises_at_once(
    new_client, stopwatch, header, kwargs, expected
):
    """A Retry-After above max_retry_after raises at once with retry_after set."""
    if header[1] == "date":
        header = ("Retry-After", http_date(3600))
    async with FaultyServer(rate_limited(header), ok) as server:
        client = new_client(server.base_url, max_retries=3, **kwargs)
        with pytest.raises(RateLimitError) as caught:
            await rename(client)
    assert caught.value.retry_after == pytest.approx(expected, abs=2)
    assert caught.value.attempts == server.attempts == 1
    assert stopwatch.elapsed < SLACK


async def test_retry_after_beyond_the_deadline_raises_at_once(new_client, stopwatch):
    """A Retry-After that would pass the call's deadline is not waited for."""
    async with FaultyServer(rate_limited(("Retry-After", "2")), ok) as server:
        client = new_client(server.base_url, deadline=1.0)
        with pytest.raises(RateLimitError) as caught:
            await rename(client)
    assert caught.value.retry_after == 2.0
    assert caught.value.attempts == server.attempts == 1
    assert stopwatch.elapsed < SLACK


@pytest.mark.parametrize("garbage", ["soon", "-1", "1e3", "", "Wed, 99 Foo", "inf"])
async def test_garbage_retry_after_falls_back_to_backoff(
    new_client, stopwatch, caplog, garbage
):
    """An unreadable Retry-After is ignored: the normal backoff applies."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    step = rate_limited(("Retry-After", garbage))
    async with FaultyServer(step, step, ok) as server:
        client = new_client(server.base_url, max_retries=2)
        with pytest.raises(RateLimitError) as caught:
            await rename(client, max_retries=0)
        assert caught.value.retry_after is None
        await rename(client)
    assert server.attempts == 3
    [wait] = logged_waits(caplog)
    assert 0 <= wait <= 0.5
    assert stopwatch.elapsed < wait + SLACK


# -- timeouts and the deadline ----------------------------------------------------


async def test_headers_slower_than_the_timeout(new_client, stopwatch, no_retry_wait):
    """Headers that never come time out per attempt; a named rename is retried."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url, max_retries=1, timeout=0.3)
        with pytest.raises(APITimeoutError) as caught:
            await rename(client)
        await server.wait_for_requests(2)
    assert caught.value.request_sent is True
    assert caught.value.attempts == server.attempts == 2
    assert 0.55 <= stopwatch.elapsed < 0.6 + SLACK


async def test_headers_slower_than_the_timeout_auto_generate(
    new_client, stopwatch, no_retry_wait
):
    """A read timeout on auto_generate is raised after one attempt."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url, max_retries=3)
        with pytest.raises(APITimeoutError) as caught:
            await rename(client, auto_generate=True, timeout=0.3)
    assert caught.value.attempts == server.attempts == 1
    assert 0.25 <= stopwatch.elapsed < 0.3 + SLACK


async def test_body_trickled_slower_than_the_total_timeout(
    new_client, stopwatch, no_retry_wait
):
    """A body that keeps coming but too slowly times out on the total timeout."""
    async with FaultyServer(trickle(0.05)) as server:
        client = new_client(server.base_url, max_retries=0, timeout=0.4)
        with pytest.raises(APITimeoutError) as caught:
            await rename(client)
    assert caught.value.attempts == server.attempts == 1
    assert 0.35 <= stopwatch.elapsed < 0.4 + SLACK


async def test_deadline_bounds_every_attempt_together(
    new_client, stopwatch, no_retry_wait
):
    """The deadline cuts the last attempt short: the call never outlives it."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url, max_retries=10, timeout=0.3)
        with pytest.raises(APITimeoutError) as caught:
            await rename(client, deadline=0.5)
    assert server.attempts == 2
    assert caught.value.attempts == 2
    assert 0.45 <= stopwatch.elapsed < 0.5 + SLACK


async def test_deadline_is_never_exceeded_by_sleeping(new_client, stopwatch, caplog):
    """Backoff sleeps stop before they would pass the deadline."""
    caplog.set_level(logging.WARNING, logger="dify_async")
    client = new_client(refused_base_url(), max_retries=50, deadline=0.8)
    with pytest.raises(APIConnectionError) as caught:
        await rename(client)
    waits = logged_waits(caplog)
    assert sum(waits) < 0.8
    assert stopwatch.elapsed < 0.8 + SLACK
    assert caught.value.attempts == len(waits) + 1
    assert caught.value.attempts < 51


# -- oversized bodies -------------------------------------------------------------


async def huge_declared(request: Request, connection: Connection) -> None:
    await connection.head(
        200, [("Content-Type", "application/json")], content_length=100 * 2**20
    )
    await wait_for_peer_close(connection)


async def endless_chunks(request: Request, connection: Connection) -> None:
    await connection.head(
        200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        await connection.send(chunk)


@pytest.mark.parametrize("step", [huge_declared, endless_chunks])
async def test_a_body_past_max_response_size_is_refused(
    new_client, stopwatch, no_retry_wait, step
):
    """A 2xx body past max_response_size is refused, not buffered, not retried."""
    async with FaultyServer(step) as server:
        client = new_client(server.base_url, max_response_size=256 * 1024)
        with pytest.raises(APIResponseValidationError) as caught:
            await rename(client)
    assert "max_response_size" in caught.value.message
    assert caught.value.attempts == server.attempts == 1
    assert stopwatch.elapsed < 1.0 + SLACK


async def test_a_huge_error_page_gives_a_short_error(new_client, no_retry_wait):
    """A 502 with a giant body still raises InternalServerError, briefly."""
    page = b"<html><body>" + b"x" * (2 * 2**20) + b"</body></html>"
    step = reply(502, page, content_type="text/html")
    async with FaultyServer(step) as server:
        client = new_client(server.base_url, max_response_size=64 * 1024)
        with pytest.raises(InternalServerError) as caught:
            await rename(client)
    assert len(str(caught.value)) < 1000
    assert caught.value.attempts == server.attempts == 3


# -- cancellation and closing -----------------------------------------------------


async def test_cancelling_a_call_releases_its_connection(new_client):
    """A cancelled call closes its connection; the client keeps working."""
    async with FaultyServer(hang, ok) as server:
        client = new_client(server.base_url)
        task = asyncio.create_task(rename(client))
        await server.wait_for_requests(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await server.wait_until_idle()
        assert server.closed_by_peer == 1
        assert server.open_connections == 0
        assert (await rename(client)).name == "Trip plans"
    assert server.attempts == 2


async def test_closing_the_client_ends_calls_in_flight(new_client, stopwatch):
    """Calls waiting on the server when the client closes end in ClientClosedError."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url)
        tasks = [asyncio.create_task(rename(client)) for _ in range(5)]
        await server.wait_for_requests(5)
        await client.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ClientClosedError) for r in results), results
    assert server.attempts == 5
    assert stopwatch.elapsed < SLACK


async def test_closing_the_client_ends_calls_waiting_to_retry(new_client, stopwatch):
    """A call sleeping before a retry ends with ClientClosedError when closed."""
    async with FaultyServer(rate_limited(("Retry-After", "5")), ok) as server:
        client = new_client(server.base_url)
        task = asyncio.create_task(rename(client))
        await server.wait_for_requests(1)
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(ClientClosedError):
            await task
    assert server.attempts == 1
    assert stopwatch.elapsed < 1.0 + SLACK


async def test_closing_a_client_on_a_borrowed_session_stops_its_retries(stopwatch):
    """A client on a session passed in stops retrying when closed, session open."""
    async with (
        FaultyServer(rate_limited(("Retry-After", "5")), ok) as server,
        aiohttp.ClientSession() as session,
    ):
        client = AsyncDifyClient(KEY, base_url=server.base_url, session=session)
        task = asyncio.create_task(rename(client))
        await server.wait_for_requests(1)
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(ClientClosedError):
            await task
        assert not session.closed
    assert server.attempts == 1
    assert stopwatch.elapsed < 1.0 + SLACK


async def test_closing_the_client_ends_calls_waiting_for_a_connection(
    new_client, stopwatch
):
    """Calls queued for a connection slot end with ClientClosedError on close."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url, connection_limit=1)
        tasks = [asyncio.create_task(rename(client)) for _ in range(3)]
        await server.wait_for_requests(1)
        await asyncio.sleep(0.05)
        await client.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ClientClosedError) for r in results), results
    assert server.attempts == 1
    assert stopwatch.elapsed < SLACK


async def test_closing_the_client_ends_calls_waiting_for_their_pace(
    new_client, stopwatch
):
    """Calls held back by max_rate end with ClientClosedError on close."""
    async with FaultyServer(hang) as server:
        client = new_client(server.base_url, max_rate=1)
        tasks = [asyncio.create_task(rename(client)) for _ in range(3)]
        await server.wait_for_requests(1)
        await client.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ClientClosedError) for r in results), results
    assert server.attempts == 1
    assert stopwatch.elapsed < 2.0 + SLACK


# -- logging ----------------------------------------------------------------------


async def test_each_retry_logs_one_warning_without_the_key(
    new_client, caplog, no_retry_wait
):
    """Each retry writes one WARNING with attempt, wait, reason, method and URL."""
    caplog.set_level(logging.DEBUG, logger="dify_async")
    async with FaultyServer(gateway_page(502), reset, ok) as server:
        url = f"{server.base_url}/conversations/{CID}/name"
        client = new_client(server.base_url, max_retries=2)
        await rename(client)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    first, second = (r.getMessage() for r in warnings)
    assert f"POST {url}" in first
    assert "attempt 1 of 3" in first
    assert "502" in first
    assert "attempt 2 of 3" in second
    assert "failed: connection error" in second
    assert re.search(r" in \d+\.\d\d s", first)
    assert all(KEY not in r.getMessage() for r in caplog.records)
    assert all(r.name == "dify_async" for r in warnings)


async def test_debug_logs_each_attempt_as_it_goes_out_and_its_answer(
    new_client, caplog, no_retry_wait
):
    """DEBUG: one line per attempt sent, one per status received, in order."""
    caplog.set_level(logging.DEBUG, logger="dify_async")
    async with FaultyServer(gateway_page(502), ok) as server:
        url = f"{server.base_url}/conversations/{CID}/name"
        client = new_client(server.base_url, max_retries=1)
        await rename(client)
    debug = [
        r.getMessage()
        for r in caplog.records
        if r.name == "dify_async" and r.levelno == logging.DEBUG
    ]
    assert debug == [
        f"POST {url}",
        f"POST {url} -> 502",
        f"POST {url}",
        f"POST {url} -> 200",
    ]


# -- the same faults through the fake Dify server ---------------------------------


async def test_fake_server_gateway_faults_then_the_rename_lands(fake, stopwatch):
    """A 502 and a dropped connection before the app: the rename lands once."""
    cid = fake.add_conversation(user=USER)
    fake.inject_fault(Fault.gateway(502))
    fake.inject_fault(Fault.disconnect())
    fake.inject_fault(Fault.rate_limit(retry_after="0.2"))
    async with AsyncDifyClient(
        fake.api_key, base_url=fake.base_url, max_retries=3
    ) as client:
        conversation = await client.rename_conversation(cid, user=USER, name="Done")
    assert conversation.name == fake.get_conversation(cid).name == "Done"
    assert fake.requests_received == 4
    assert fake.renames_applied == 1
    assert 0.2 <= stopwatch.elapsed < 0.2 + 1.5 + SLACK  # two backoffs + 0.2 s


@pytest.mark.parametrize(
    ("fault", "expected", "counts"),
    [
        (Fault.gateway(503), None, (2, 1)),
        (Fault.rate_limit(retry_after="0"), None, (2, 1)),
        (Fault.gateway(502), InternalServerError, (1, 0)),
        (Fault.gateway(502, after_processing=True), InternalServerError, (1, 1)),
        (Fault.gateway(504, after_processing=True), InternalServerError, (1, 1)),
        (Fault.disconnect(after_processing=True), APIConnectionError, (1, 1)),
        (Fault.delay(1.0, after_processing=True), APITimeoutError, (1, 1)),
    ],
    ids=["503", "429", "502", "502-after", "504-after", "drop-after", "slow-after"],
)
async def test_fake_server_auto_generate_is_never_billed_twice(
    fake, no_retry_wait, fault, expected, counts
):
    """auto_generate is retried only where the LLM was not called."""
    cid = fake.add_conversation(user=USER, messages=["Best hikes near Zurich?"])
    fake.inject_fault(fault)
    async with AsyncDifyClient(
        fake.api_key, base_url=fake.base_url, max_retries=3, timeout=0.3
    ) as client:
        call = client.rename_conversation(cid, user=USER, auto_generate=True)
        if expected is None:
            await call
        else:
            with pytest.raises(expected) as caught:
                await call
            assert caught.value.attempts == 1
    assert (fake.requests_received, fake.llm_calls) == counts
