"""Settings: checked once, overridden per call and by with_options() views."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from faulty_servers import CID, KEY, FaultyServer, gateway_page, hang, ok

from dify_async import (
    APITimeoutError,
    AsyncDifyClient,
    ClientClosedError,
    InternalServerError,
    InvalidRequestError,
    RetryEvent,
)


class TestChecks:
    @pytest.mark.parametrize(
        ("setting", "value", "fragment"),
        [
            ("timeout", 0, "timeout"),
            ("timeout", "5", "timeout"),
            ("deadline", -1, "deadline"),
            ("deadline", float("inf"), "deadline"),
            ("max_retries", -1, "max_retries"),
            ("max_retries", True, "max_retries"),
            ("max_retry_after", 0, "max_retry_after"),
            ("max_rate", 0, "max_rate"),
            ("connection_limit", 1.5, "connection_limit"),
            ("max_response_size", 0, "max_response_size"),
            ("on_retry", 42, "on_retry"),
        ],
    )
    def test_a_bad_setting_is_refused_at_construction(self, setting, value, fragment):
        """Every setting is checked when the client is made, naming it."""
        with pytest.raises(InvalidRequestError, match=fragment):
            AsyncDifyClient(KEY, **{setting: value})

    @pytest.mark.parametrize(
        ("setting", "value"),
        [("timeout", -1), ("deadline", 0), ("max_retries", 1.0)],
    )
    async def test_a_bad_per_call_setting_is_refused_before_sending(
        self, setting, value
    ):
        """A per-call override is checked as strictly, and nothing is sent."""
        async with (
            FaultyServer(ok) as server,
            AsyncDifyClient(KEY, base_url=server.base_url) as client,
        ):
            with pytest.raises(InvalidRequestError, match=setting):
                await client.rename_conversation(
                    CID, name="x", user="u", **{setting: value}
                )
        assert server.attempts == 0

    def test_a_bad_with_options_setting_is_refused(self):
        """with_options() checks what it is given."""
        client = AsyncDifyClient(KEY)
        with pytest.raises(InvalidRequestError, match="max_retry_after"):
            client.with_options(max_retry_after=-5)
        with pytest.raises(InvalidRequestError, match="on_retry"):
            client.with_options(on_retry="print")  # type: ignore[arg-type]


class TestPerCall:
    async def test_an_omitted_argument_keeps_the_clients_value(self, no_retry_wait):
        """max_retries left out of a call is the client's."""
        async with (
            FaultyServer(gateway_page(502)) as server,
            AsyncDifyClient(KEY, base_url=server.base_url, max_retries=1) as client,
        ):
            with pytest.raises(InternalServerError) as caught:
                await client.rename_conversation(CID, name="x", user="u")
        assert caught.value.attempts == server.attempts == 2

    async def test_a_per_call_value_replaces_the_clients(self, no_retry_wait):
        """max_retries=0 on a call makes one attempt, whatever the client says."""
        async with (
            FaultyServer(gateway_page(502)) as server,
            AsyncDifyClient(KEY, base_url=server.base_url, max_retries=5) as client,
        ):
            with pytest.raises(InternalServerError):
                await client.rename_conversation(CID, name="x", user="u", max_retries=0)
        assert server.attempts == 1

    async def test_deadline_none_on_a_call_means_no_deadline(self):
        """deadline=None on a call lifts the client's deadline for that call."""

        async def slow_ok(request, connection):
            await asyncio.sleep(0.4)
            await ok(request, connection)

        async with (
            FaultyServer(slow_ok) as server,
            AsyncDifyClient(
                KEY, base_url=server.base_url, deadline=0.1, max_retries=0
            ) as client,
        ):
            with pytest.raises(APITimeoutError):
                await client.rename_conversation(CID, name="x", user="u")
            conversation = await client.rename_conversation(
                CID, name="x", user="u", deadline=None
            )
        assert conversation.id == CID


class TestWithOptions:
    async def test_a_view_shares_the_clients_connections(self):
        """Calls through a view reuse the client's pooled connection."""
        async with (
            FaultyServer(ok) as server,
            AsyncDifyClient(KEY, base_url=server.base_url) as client,
        ):
            view = client.with_options(max_retries=0)
            await client.rename_conversation(CID, name="a", user="u")
            await view.rename_conversation(CID, name="b", user="u")
            await client.rename_conversation(CID, name="c", user="u")
        assert server.attempts == 3
        assert server.connections_opened == 1

    async def test_closing_a_view_leaves_the_client_open(self):
        """A closed view refuses calls; the client and its session go on."""
        async with (
            FaultyServer(ok) as server,
            AsyncDifyClient(KEY, base_url=server.base_url) as client,
        ):
            async with client.with_options(deadline=5) as view:
                await view.rename_conversation(CID, name="a", user="u")
            assert view.closed
            assert not client.closed
            with pytest.raises(ClientClosedError):
                await view.rename_conversation(CID, name="b", user="u")
            await client.rename_conversation(CID, name="c", user="u")
            assert server.open_connections == 1
        assert server.attempts == 2

    async def test_closing_the_client_ends_its_views(self):
        """A view of a closed client is closed too."""
        async with FaultyServer(ok) as server:
            client = AsyncDifyClient(KEY, base_url=server.base_url)
            view = client.with_options(max_retries=0)
            await client.close()
            assert view.closed
            with pytest.raises(ClientClosedError):
                await view.rename_conversation(CID, name="x", user="u")
        assert server.attempts == 0

    async def test_a_view_of_a_borrowed_session_leaves_it_open(self):
        """Closing a view, or the client, never closes a borrowed session."""
        async with FaultyServer(ok) as server, aiohttp.ClientSession() as session:
            client = AsyncDifyClient(KEY, base_url=server.base_url, session=session)
            async with client.with_options(max_retries=1) as view:
                await view.rename_conversation(CID, name="x", user="u")
            await client.close()
            assert not session.closed

    async def test_a_views_settings_apply_to_its_calls_only(self):
        """A view with another timeout and hook; the client keeps its own."""
        events: list[RetryEvent] = []
        async with (
            FaultyServer(hang) as server,
            AsyncDifyClient(
                KEY, base_url=server.base_url, max_retries=0, timeout=30
            ) as client,
        ):
            view = client.with_options(
                timeout=0.2, max_retries=1, on_retry=events.append
            )
            started = time.monotonic()
            with pytest.raises(APITimeoutError):
                await view.rename_conversation(CID, name="x", user="u")
            assert time.monotonic() - started < 5
        assert server.attempts == 2
        assert [event.attempt for event in events] == [1]
        assert isinstance(events[0].error, APITimeoutError)
