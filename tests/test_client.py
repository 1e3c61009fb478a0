"""The client against the fake Dify server, over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from faulty_servers import KEY, FaultyServer, ok

import dify_async
from dify_async import (
    AsyncDifyClient,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    Conversation,
    DifyError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from dify_async.testing import FakeDifyServer

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    """A server that records requests and answers a fixed conversation."""
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.json_response(
            {"id": request.match_info["cid"], "name": "n", "inputs": {}}
        )

    app = web.Application()
    app.router.add_post("/v1/conversations/{cid}/name", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1", seen, bodies
    await runner.cleanup()


class TestRename:
    async def test_rename_returns_the_stored_conversation(self, fake, client):
        """A rename returns the conversation as the server stored it."""
        cid = fake.add_conversation(user="user-42", inputs={"city": "Paris"})
        conversation = await client.rename_conversation(
            cid, name="Trip plans", user="user-42"
        )
        assert isinstance(conversation, Conversation)
        assert conversation.id == cid
        assert conversation.name == "Trip plans"
        assert conversation.inputs == {"city": "Paris"}
        assert conversation.updated_at is not None
        assert conversation.updated_at.tzinfo is not None
        assert fake.get_conversation(cid).name == "Trip plans"

    async def test_upper_case_and_uuid_objects_address_the_same_conversation(
        self, fake, client
    ):
        """A uuid.UUID or an upper-case id reaches the same conversation."""
        cid = fake.add_conversation(user="u")
        await client.rename_conversation(uuid.UUID(cid), name="one", user="u")
        conversation = await client.rename_conversation(
            cid.upper(), name="two", user="u"
        )
        assert conversation.id == cid
        assert fake.get_conversation(cid).name == "two"

    async def test_name_is_stored_unstripped(self, fake, client):
        """Leading and trailing white space survives the round trip."""
        cid = fake.add_conversation(user="u")
        conversation = await client.rename_conversation(cid, name="  x  ", user="u")
        assert conversation.name == "  x  "
        assert fake.get_conversation(cid).name == "  x  "

    async def test_auto_generate_titles_from_the_first_message(self, fake, client):
        """auto_generate asks the server for a title: one LLM call."""
        cid = fake.add_conversation(
            user="u", name="Old", messages=["Compare iPhone specs", "Later"]
        )
        conversation = await client.rename_conversation(
            cid, auto_generate=True, user="u"
        )
        assert conversation.name != "Old"
        assert conversation.name == fake.get_conversation(cid).name
        assert fake.llm_calls == 1

    async def test_auto_generate_without_messages_is_a_bad_request(self, fake, client):
        """No messages to title from: 400 invalid_param with an empty message."""
        cid = fake.add_conversation(user="u")
        with pytest.raises(BadRequestError) as info:
            await client.rename_conversation(cid, auto_generate=True, user="u")
        assert info.value.code == "invalid_param"
        assert info.value.message == ""
        assert info.value.attempts == 1

    async def test_conversation_of_another_user_is_not_found(self, fake, client):
        """The same id under another user is a 404, not retried."""
        cid = fake.add_conversation(user="alice")
        with pytest.raises(NotFoundError) as info:
            await client.rename_conversation(cid, name="x", user="bob")
        assert info.value.code == "not_found"
        assert info.value.server_version == fake.version
        assert info.value.attempts == 1
        assert fake.requests_received == 1
        assert fake.get_conversation(cid).name != "x"

    async def test_unknown_and_deleted_conversations_are_not_found(self, fake, client):
        """Unknown or deleted conversations raise NotFoundError."""
        cid = fake.add_conversation(user="u")
        fake.delete_conversation(cid)
        for target in (cid, str(uuid.uuid4())):
            with pytest.raises(NotFoundError):
                await client.rename_conversation(target, name="x", user="u")


class TestServerRefusals:
    async def test_unknown_key_is_an_authentication_error(self, fake):
        """An unknown key raises AuthenticationError, and the key is not shown."""
        key = "app-notakeyanyonehas1234"
        async with AsyncDifyClient(key, base_url=fake.base_url) as client:
            with pytest.raises(AuthenticationError) as info:
                await client.rename_conversation(CID, name="x", user="u")
        assert info.value.code == "unauthorized"
        assert key not in str(info.value)
        assert key not in repr(info.value)
        assert fake.requests_received == 1

    async def test_workflow_app_key_is_not_a_chat_app(self, fake):
        """A workflow app's key gets 400 not_chat_app."""
        async with AsyncDifyClient(
            fake.workflow_api_key, base_url=fake.base_url
        ) as client:
            with pytest.raises(BadRequestError) as info:
                await client.rename_conversation(CID, name="x", user="u")
        assert info.value.code == "not_chat_app"

    async def test_disabled_app_is_forbidden(self, fake):
        """A disabled app's key raises PermissionDeniedError."""
        async with AsyncDifyClient(
            fake.disabled_api_key, base_url=fake.base_url
        ) as client:
            with pytest.raises(PermissionDeniedError) as info:
                await client.rename_conversation(CID, name="x", user="u")
        assert info.value.code == "forbidden"

    async def test_base_url_without_v1_gets_an_html_not_found(self, fake):
        """A base URL missing /v1 meets the routing 404, with no Dify code."""
        base = fake.base_url.removesuffix("/v1")
        async with AsyncDifyClient(fake.api_key, base_url=base) as client:
            with pytest.raises(NotFoundError) as info:
                await client.rename_conversation(CID, name="x", user="u")
        assert info.value.code is None
        assert "404" in str(info.value)
        assert "/v1" in info.value.message


class TestValidationBeforeSending:
    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"conversation_id": "nope", "name": "x", "user": "u"}, "conversation_id"),
            ({"conversation_id": CID, "name": "", "user": "u"}, "name"),
            ({"conversation_id": CID, "name": "x" * 256, "user": "u"}, "name"),
            ({"conversation_id": CID, "user": "u"}, "name"),
            ({"conversation_id": CID, "name": "x", "user": ""}, "user"),
            ({"conversation_id": CID, "name": "x", "user": "a\r\nX: y"}, "user"),
        ],
    )
    async def test_bad_input_is_refused_before_sending(
        self, fake, client, kwargs, field
    ):
        """Bad arguments raise InvalidRequestError naming the field; nothing sent."""
        with pytest.raises(InvalidRequestError, match=field) as info:
            await client.rename_conversation(**kwargs)
        assert info.value.attempts == 0
        assert fake.requests_received == 0

    async def test_bad_per_call_settings_are_refused(self, fake, client):
        """A negative timeout or retry count is refused before sending."""
        with pytest.raises(InvalidRequestError, match="timeout"):
            await client.rename_conversation(CID, name="x", user="u", timeout=-1)
        with pytest.raises(InvalidRequestError, match="max_retries"):
            await client.rename_conversation(CID, name="x", user="u", max_retries=-1)
        with pytest.raises(InvalidRequestError, match="deadline"):
            await client.rename_conversation(CID, name="x", user="u", deadline=0)
        assert fake.requests_received == 0


class TestConfiguration:
    def test_no_key_anywhere_is_a_clear_error(self, monkeypatch):
        """Without api_key or DIFY_API_KEY, construction fails clearly."""
        monkeypatch.delenv("DIFY_API_KEY", raising=False)
        with pytest.raises(InvalidRequestError, match="DIFY_API_KEY"):
            AsyncDifyClient()

    def test_an_empty_key_variable_counts_as_no_key(self, monkeypatch):
        """DIFY_API_KEY set but empty is reported as no key, like a missing one."""
        monkeypatch.setenv("DIFY_API_KEY", "")
        with pytest.raises(InvalidRequestError) as caught:
            AsyncDifyClient()
        assert caught.value.message == "no API key: pass api_key= or set DIFY_API_KEY"

    async def test_key_and_base_url_come_from_the_environment(self, fake, monkeypatch):
        """DIFY_API_KEY and DIFY_BASE_URL are used when no arguments are given."""
        monkeypatch.setenv("DIFY_API_KEY", fake.api_key)
        monkeypatch.setenv("DIFY_BASE_URL", fake.base_url + "/")
        cid = fake.add_conversation(user="u")
        async with AsyncDifyClient() as client:
            assert client.base_url == fake.base_url
            await client.rename_conversation(cid, name="env", user="u")
        assert fake.get_conversation(cid).name == "env"

    def test_default_base_url_is_dify_cloud(self, monkeypatch):
        """Without DIFY_BASE_URL the client talks to Dify Cloud."""
        monkeypatch.delenv("DIFY_BASE_URL", raising=False)
        assert AsyncDifyClient("app-x").base_url == "https://api.dify.ai/v1"

    @pytest.mark.parametrize("key", ["app-abc\n", "app abc", "app-\x00", "clé-ü", ""])
    def test_keys_unfit_for_a_header_are_refused_without_echo(self, key):
        """A key with white space or control characters is refused, not echoed."""
        with pytest.raises(InvalidRequestError, match="api_key") as info:
            AsyncDifyClient(key)
        if key:
            assert key not in str(info.value)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"timeout": 0},
            {"timeout": "5"},
            {"timeout": True},
            {"deadline": -1},
            {"max_retries": 1.5},
            {"max_rate": 0},
            {"connection_limit": -1},
            {"max_response_size": 0},
            {"max_retry_after": -1},
        ],
    )
    def test_out_of_range_settings_are_refused(self, kwargs):
        """Nonsense settings are refused at construction, naming the setting."""
        name = next(iter(kwargs))
        with pytest.raises(InvalidRequestError, match=name):
            AsyncDifyClient("app-x", **kwargs)

    async def test_requests_identify_the_library(self, recorder):
        """The User-Agent names the library, its version and aiohttp's."""
        base_url, seen, bodies = recorder
        async with AsyncDifyClient("app-secret", base_url=base_url) as client:
            await client.rename_conversation(CID, name="n", user="u")
        agent = seen[0].headers["User-Agent"]
        assert f"dify-async/{dify_async.__version__}" in agent
        assert f"aiohttp/{aiohttp.__version__}" in agent
        assert seen[0].headers["Authorization"] == "Bearer app-secret"
        assert seen[0].headers["Content-Type"] == "application/json"
        assert json.loads(bodies[0]) == {
            "name": "n",
            "auto_generate": False,
            "user": "u",
        }


class TestLifecycle:
    async def test_own_session_is_closed_on_exit(self):
        """The client's own connections are closed when the block ends."""
        async with FaultyServer(ok) as server:
            async with AsyncDifyClient(KEY, base_url=server.base_url) as client:
                await client.rename_conversation(CID, name="x", user="u")
                assert server.open_connections == 1  # kept alive in the pool
            await server.wait_until_idle()
            assert server.open_connections == 0
            assert server.closed_by_peer == 1
        assert client.closed

    async def test_borrowed_session_is_never_closed(self, fake):
        """A session passed in is used, then left open for its owner."""
        cid = fake.add_conversation(user="u")
        async with aiohttp.ClientSession() as session:
            async with AsyncDifyClient(
                fake.api_key, base_url=fake.base_url, session=session
            ) as client:
                await client.rename_conversation(cid, name="b", user="u")
            assert not session.closed
            assert client.closed
        assert fake.get_conversation(cid).name == "b"

    async def test_borrowed_session_closed_by_its_owner_is_a_clear_error(self, fake):
        """Using a client whose borrowed session was closed raises ClientClosedError."""
        session = aiohttp.ClientSession()
        await session.close()
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url, session=session)
        with pytest.raises(ClientClosedError, match="session"):
            await client.rename_conversation(CID, name="x", user="u")

    async def test_closing_twice_is_harmless(self, fake):
        """close() is idempotent, inside and after the block."""
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            await client.close()
        await client.close()

    async def test_closed_client_raises_a_dify_error(self, fake):
        """A closed client raises ClientClosedError, not an aiohttp traceback."""
        client = AsyncDifyClient(fake.api_key, base_url=fake.base_url)
        await client.close()
        with pytest.raises(ClientClosedError) as info:
            await client.rename_conversation(CID, name="x", user="u")
        assert isinstance(info.value, DifyError)
        with pytest.raises(ClientClosedError):
            async with client:
                pass
        assert fake.requests_received == 0

    async def test_client_built_outside_the_loop_works_inside_it(self, fake):
        """Constructing the client makes no session; the first call does, in-loop."""
        client = await asyncio.to_thread(
            AsyncDifyClient, fake.api_key, base_url=fake.base_url
        )
        cid = fake.add_conversation(user="u")
        try:
            await client.rename_conversation(cid, name="lazy", user="u")
        finally:
            await client.close()
        assert fake.get_conversation(cid).name == "lazy"

    def test_closing_an_unused_client_needs_no_event_loop_work(self):
        """A client that never sent anything closes cleanly, in any loop."""
        client = AsyncDifyClient("app-x")
        asyncio.run(client.close())
        assert client.closed


class TestSecrets:
    async def test_key_never_appears_in_repr_logs_or_errors(self, fake, caplog):
        """The API key stays out of reprs, DEBUG logs and every error message."""
        caplog.set_level(logging.DEBUG, logger="dify_async")
        cid = fake.add_conversation(user="u")
        fake.inject_fault(dify_async.testing.Fault.gateway(502))
        errors: list[BaseException] = []
        async with AsyncDifyClient(
            fake.api_key, base_url=fake.base_url, max_retries=1
        ) as client:
            text = repr(client)
            await client.rename_conversation(cid, name="ok", user="u")
            for bad in (
                {"conversation_id": str(uuid.uuid4()), "name": "x", "user": "u"},
                {"conversation_id": cid, "name": "x", "user": "other"},
            ):
                try:
                    await client.rename_conversation(**bad)
                except DifyError as error:
                    errors.append(error)
        assert len(errors) == 2
        haystack = [text, caplog.text, *map(str, errors), *map(repr, errors)]
        haystack += [repr(vars(error)) for error in errors]
        for item in haystack:
            assert fake.api_key not in item
        assert "Retrying" in caplog.text
        assert "Bearer" not in caplog.text

    async def test_redirects_are_not_followed(self, fake):
        """A 3xx is raised naming its Location; the key never follows it."""
        leaked: list[str] = []

        async def elsewhere(request: web.Request) -> web.Response:
            leaked.append(request.headers.get("Authorization", ""))
            return web.json_response({"id": CID, "name": "n"})

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(str(other_url))

        app = web.Application()
        app.router.add_route("*", "/v1/{tail:.*}", redirect)
        app.router.add_route("*", "/other", elsewhere)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        other_url = f"http://127.0.0.1:{port}/other"
        try:
            async with AsyncDifyClient(
                "app-secret", base_url=f"http://127.0.0.1:{port}/v1"
            ) as client:
                with pytest.raises(dify_async.APIStatusError) as info:
                    await client.rename_conversation(CID, name="x", user="u")
        finally:
            await runner.cleanup()
        assert info.value.status_code == 307
        assert other_url in str(info.value)
        assert leaked == []

    async def test_tls_is_verified_by_default(self):
        """A server with a self-signed certificate is refused, and not retried."""
        trustme = pytest.importorskip("trustme")
        import ssl  # noqa: PLC0415

        authority = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        authority.issue_cert("127.0.0.1").configure_cert(context)
        hits: list[int] = []

        async def handle(request: web.Request) -> web.Response:
            hits.append(1)
            return web.json_response({"id": CID, "name": "n"})

        app = web.Application()
        app.router.add_post("/v1/conversations/{cid}/name", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with AsyncDifyClient(
                "app-secret", base_url=f"https://127.0.0.1:{port}/v1", max_retries=0
            ) as client:
                with pytest.raises(dify_async.APIConnectionError) as info:
                    await client.rename_conversation(CID, name="x", user="u")
        finally:
            await runner.cleanup()
        assert info.value.request_sent is False
        assert hits == []


class TestGatewayAnswers:
    async def test_html_gateway_error_after_retries(self, fake, no_retry_wait):
        """Gateway 502s on every attempt end in InternalServerError after 3 tries."""
        cid = fake.add_conversation(user="u")
        fake.inject_fault(dify_async.testing.Fault.gateway(502), times=5)
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            with pytest.raises(InternalServerError) as info:
                await client.rename_conversation(cid, name="x", user="u")
        assert info.value.status_code == 502
        assert info.value.code is None
        assert info.value.attempts == 3
        assert fake.requests_received == 3

    async def test_server_error_for_an_overlong_name_never_happens(self, fake, client):
        """A name over 255 characters is refused locally, so no 500 is met."""
        cid = fake.add_conversation(user="u")
        with pytest.raises(InvalidRequestError):
            await client.rename_conversation(cid, name="x" * 300, user="u")
        assert fake.requests_received == 0


class TestSchemaDrift:
    async def test_fake_server_answers_decode_with_the_strict_converter(self, fake):
        """The fake's success body has exactly the fields Conversation knows."""
        from dify_async._converter import make_converter  # noqa: PLC0415

        cid = fake.add_conversation(user="u", inputs={"a": 1}, introduction=None)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{fake.base_url}/conversations/{cid}/name",
                json={"name": "strict", "user": "u"},
                headers={"Authorization": f"Bearer {fake.api_key}"},
            ) as response,
        ):
            data = await response.json()
        strict = make_converter(forbid_extra_keys=True)
        conversation = strict.structure(data, Conversation)
        assert conversation.name == "strict"
        assert conversation.introduction is None


class TestRetryAfterCap:
    async def test_long_retry_after_is_raised_at_once_by_default(self, fake):
        """A Retry-After above the 60 s cap raises at once, with the wait set."""
        cid = fake.add_conversation(user="u")
        fake.inject_fault(dify_async.testing.Fault.rate_limit(retry_after="3600"))
        async with AsyncDifyClient(fake.api_key, base_url=fake.base_url) as client:
            with pytest.raises(dify_async.RateLimitError) as info:
                await client.rename_conversation(cid, name="x", user="u")
        assert info.value.retry_after == 3600.0
        assert info.value.attempts == 1

    async def test_no_cap_waits_for_any_retry_after(self, fake, no_retry_wait):
        """max_retry_after=None retries after any Retry-After (waits made instant)."""
        cid = fake.add_conversation(user="u")
        fake.inject_fault(dify_async.testing.Fault.rate_limit(retry_after="3600"))
        async with AsyncDifyClient(
            fake.api_key, base_url=fake.base_url, max_retry_after=None
        ) as client:
            conversation = await client.rename_conversation(cid, name="x", user="u")
        assert conversation.name == "x"
        assert fake.requests_received == 2


class TestConnectionPool:
    @pytest.mark.parametrize("borrowed", [False, True])
    async def test_waiting_for_a_connection_does_not_eat_the_timeout(self, borrowed):
        """Calls queued behind a full pool get their whole timeout once sent."""
        async with FakeDifyServer(latency=0.1) as server:
            ids = [server.add_conversation(user="u") for _ in range(5)]
            session = (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                if borrowed
                else None
            )
            try:
                async with AsyncDifyClient(
                    server.api_key,
                    base_url=server.base_url,
                    connection_limit=1,
                    session=session,
                    timeout=0.35,
                    max_retries=0,
                ) as client:
                    results = await asyncio.gather(
                        *(
                            client.rename_conversation(c, name="n", user="u")
                            for c in ids
                        )
                    )
            finally:
                if session is not None:
                    await session.close()
            assert [r.name for r in results] == ["n"] * 5
            assert server.max_in_flight == 1
            assert server.requests_received == 5
