"""The fake Dify server answers like the contract says, over real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import aiohttp
import attrs
import pytest

from dify_async.testing import FakeDifyServer, Fault, StoredConversation
from dify_async.testing._faults import FaultQueue

NO_BEARER = "Authorization header must be provided and start with 'Bearer'"
BAD_SCHEME = "Authorization scheme must be 'Bearer'"
BAD_TOKEN = "Access token is invalid"
SUCCESS_KEYS = {
    "id",
    "name",
    "inputs",
    "status",
    "introduction",
    "created_at",
    "updated_at",
}
NOT_FOUND_HTML = b"<title>404 Not Found</title>"
_UNSET: Any = object()


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> tuple[int, str, str]:
        """The (status, code, message) of a Dify error answer."""
        assert self.headers["Content-Type"] == "application/json"
        data = self.json()
        assert set(data) == {"code", "message", "status"}
        assert data["status"] == self.status
        return data["status"], data["code"], data["message"]


@pytest.fixture
async def server():
    async with FakeDifyServer() as fake:
        yield fake


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client:
        yield client


async def call(
    session: aiohttp.ClientSession,
    server: FakeDifyServer,
    conversation_id: str,
    body: Any = _UNSET,
    *,
    key: str | None = None,
    headers: dict[str, str | None] | None = None,
    data: bytes | None = None,
    method: str = "POST",
    path: str | None = None,
) -> Reply:
    """Send one request to the rename route (or *path*) and read the answer."""
    sent: dict[str, str | None] = {
        "Authorization": f"Bearer {key or server.api_key}",
        "Content-Type": "application/json",
    }
    sent.update(headers or {})
    if data is None:
        data = b"" if body is _UNSET else json.dumps(body).encode()
    url = server.base_url + (path or f"/conversations/{conversation_id}/name")
    async with session.request(
        method,
        url,
        data=data,
        headers={k: v for k, v in sent.items() if v is not None},
        skip_auto_headers=["Content-Type"],
    ) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def rename(session, server, cid, **body: Any) -> Reply:
    return await call(session, server, cid, body)


async def until_received(fake: FakeDifyServer) -> None:
    """Wait until the server has received a rename request."""
    for _ in range(500):
        if fake.requests_received:
            return
        await asyncio.sleep(0.01)
    pytest.fail("no request arrived")


# -- success -------------------------------------------------------------------


async def test_rename_returns_the_conversation(server, session):
    """A rename answers 200 with exactly the seven documented fields."""
    cid = server.add_conversation(
        user="u-1",
        name="Old",
        inputs={"city": "San Francisco", "n": [1, {"x": None}]},
        introduction="Welcome!",
        created_at=1705407629,
    )
    before = int(time.time())

    reply = await rename(session, server, cid, name="iPhone Specs Chat", user="u-1")

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    data = reply.json()
    assert set(data) == SUCCESS_KEYS
    assert data["id"] == cid
    assert data["name"] == "iPhone Specs Chat"
    assert data["inputs"] == {"city": "San Francisco", "n": [1, {"x": None}]}
    assert data["status"] == "normal"
    assert data["introduction"] == "Welcome!"
    assert data["created_at"] == 1705407629
    assert before <= data["updated_at"] <= int(time.time())
    stored = server.get_conversation(cid)
    assert stored.name == "iPhone Specs Chat"
    assert stored.updated_at == data["updated_at"]
    assert stored.rename_count == 1


async def test_every_answer_carries_version_headers(session):
    """X-Version and X-Env carry the configured values on application answers."""
    async with FakeDifyServer(version="1.4.0", env="DEVELOPMENT") as fake:
        cid = fake.add_conversation(user="u")
        ok = await rename(session, fake, cid, name="A", user="u")
        refused = await call(session, fake, cid, {"name": "A"}, key="app-wrong")
        html = await call(session, fake, "nope")
        wrong_method = await call(session, fake, cid, method="GET")
    for reply in (ok, refused, html, wrong_method):
        assert reply.headers["X-Version"] == "1.4.0"
        assert reply.headers["X-Env"] == "DEVELOPMENT"
    assert fake.version == "1.4.0"
    assert fake.env == "DEVELOPMENT"


async def test_name_is_stored_exactly_as_sent(server, session):
    """The stored and returned name keeps surrounding white space."""
    cid = server.add_conversation(user="u")

    reply = await rename(session, server, cid, name="  Trip plans \t", user="u")

    assert reply.json()["name"] == "  Trip plans \t"
    assert server.get_conversation(cid).name == "  Trip plans \t"


async def test_upper_case_id_is_accepted_and_normalised(server, session):
    """An upper-case conversation id reaches the conversation; the answer is lower."""
    cid = server.add_conversation(user="u")

    reply = await rename(session, server, cid.upper(), name="A", user="u")

    assert reply.status == 200
    assert reply.json()["id"] == cid
    assert server.requests_by_conversation == {cid: 1}


async def test_null_introduction_and_custom_status_are_returned(server, session):
    """introduction may be null and status is any string, both echoed."""
    cid = server.add_conversation(user="u", introduction=None, status="archived")

    data = (await rename(session, server, cid, name="A", user="u")).json()

    assert data["introduction"] is None
    assert data["status"] == "archived"


async def test_name_of_255_characters_is_accepted(server, session):
    """A name of exactly 255 characters fits the column."""
    cid = server.add_conversation(user="u")

    reply = await rename(session, server, cid, name="é" * 255, user="u")

    assert reply.status == 200
    assert server.get_conversation(cid).name == "é" * 255


async def test_name_over_255_characters_is_a_500_and_not_stored(server, session):
    """A 256-character name fails as 500 unknown and leaves the name alone."""
    cid = server.add_conversation(user="u", name="Old")

    reply = await rename(session, server, cid, name="x" * 256, user="u")

    assert reply.error() == (500, "unknown", "Internal Server Error")
    assert server.get_conversation(cid).name == "Old"
    assert server.renames_applied == 0


async def test_renaming_twice_to_the_same_name_succeeds(server, session):
    """An explicit rename is idempotent: repeating it answers 200 again."""
    cid = server.add_conversation(user="u")

    first = await rename(session, server, cid, name="Same", user="u")
    second = await rename(session, server, cid, name="Same", user="u")

    assert first.json()["name"] == second.json()["name"] == "Same"
    assert server.get_conversation(cid).rename_count == 2


async def test_unknown_body_fields_are_ignored(server, session):
    """Extra keys in the body do not matter, as with pydantic's defaults."""
    cid = server.add_conversation(user="u")

    reply = await rename(session, server, cid, name="A", user="u", extra={"a": 1})

    assert reply.status == 200


# -- authentication and app checks ---------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, NO_BEARER),
        ("", NO_BEARER),
        ("Bearer", NO_BEARER),
        ("Bearer\tkey", NO_BEARER),
        ("Basic dXNlcjpwYXNz", BAD_SCHEME),
        ("Token app-123", BAD_SCHEME),
        ("Bearer app-unknown", BAD_TOKEN),
        ("Bearer  app-unknown", BAD_TOKEN),
        ("\xa0 \xa0", NO_BEARER),
    ],
)
async def test_authorization_failures_are_401(server, session, authorization, message):
    """Missing, malformed and unknown credentials answer 401 with Dify's message."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session,
        server,
        cid,
        {"name": "A", "user": "u"},
        headers={"Authorization": authorization},
    )

    assert reply.error() == (401, "unauthorized", message)
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert server.renames_applied == 0


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_bearer_scheme_is_case_insensitive(server, session, scheme):
    """The scheme is compared case-insensitively."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session,
        server,
        cid,
        {"name": "A", "user": "u"},
        headers={"Authorization": f"{scheme} {server.api_key}"},
    )

    assert reply.status == 200


async def test_authentication_comes_before_the_body(server, session):
    """A bad key is reported even when the body is not JSON at all."""
    reply = await call(
        session,
        server,
        str(uuid.uuid4()),
        data=b"{",
        key="app-nope",
        headers={"Content-Type": "text/plain"},
    )

    assert reply.error()[:2] == (401, "unauthorized")


async def test_disabled_app_is_403_before_the_body_is_read(server, session):
    """An app with its API disabled answers 403 forbidden, whatever the body."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session,
        server,
        cid,
        data=b"not json",
        key=server.disabled_api_key,
        headers={"Content-Type": "text/plain"},
    )

    assert reply.error()[:2] == (403, "forbidden")


async def test_workflow_app_is_not_a_chat_app(server, session):
    """A workflow app's key answers 400 not_chat_app."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session, server, cid, {"name": "A", "user": "u"}, key=server.workflow_api_key
    )

    assert reply.error() == (
        400,
        "not_chat_app",
        "Please check if your app mode matches the right API route.",
    )
    assert server.get_conversation(cid).rename_count == 0


async def test_workflow_app_body_is_parsed_before_the_mode_check(server, session):
    """Invalid JSON beats not_chat_app; an invalid payload does not."""
    cid = server.add_conversation(user="u")
    key = server.workflow_api_key

    bad_json = await call(session, server, cid, data=b"{", key=key)
    bad_payload = await call(session, server, cid, {"user": "u"}, key=key)

    assert bad_json.error()[:2] == (400, "bad_request")
    assert bad_payload.error()[:2] == (400, "not_chat_app")


def test_keys_look_like_dify_app_keys():
    """Each server has three distinct app keys shaped like Dify's."""
    fake = FakeDifyServer()
    keys = {fake.api_key, fake.workflow_api_key, fake.disabled_api_key}
    assert len(keys) == 3
    for key in keys:
        assert key.startswith("app-")
        assert len(key) == 28
        assert key[4:].isalnum()
    assert FakeDifyServer().api_key != fake.api_key


# -- content type and JSON -----------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "json", "text/json"],
)
async def test_non_json_content_type_is_415(server, session, content_type):
    """Anything but a JSON media type answers 415 unsupported_media_type."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session,
        server,
        cid,
        {"name": "A", "user": "u"},
        headers={"Content-Type": content_type},
    )

    status, code, _ = reply.error()
    assert (status, code) == (415, "unsupported_media_type")
    assert server.renames_applied == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/merge-patch+json",
        "application/vnd.api+json; charset=utf-8",
    ],
)
async def test_json_content_types_are_accepted(server, session, content_type):
    """Parameters and application/*+json media types are accepted."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session,
        server,
        cid,
        {"name": "A", "user": "u"},
        headers={"Content-Type": content_type},
    )

    assert reply.status == 200


EMPTY_JSON = "Invalid JSON payload received or JSON payload is empty."
DECODE_FAILED = "Failed to decode JSON object: "


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", EMPTY_JSON),
        (b"not json", EMPTY_JSON),
        (b"   ", DECODE_FAILED + "Expecting value: line 1 column 4 (char 3)"),
        # The decoder's wording differs between Python versions: prefix only.
        (b'{"name": "A",}', DECODE_FAILED),
        (b"\xff\xfe{", DECODE_FAILED),
    ],
)
async def test_invalid_or_empty_json_is_bad_request(server, session, data, message):
    """A body that is not JSON answers 400 bad_request with Dify's message."""
    cid = server.add_conversation(user="u")

    reply = await call(session, server, cid, data=data)

    status, code, text = reply.error()
    assert (status, code) == (400, "bad_request")
    if message == DECODE_FAILED:
        assert text.startswith(message)
        assert len(text) > len(message)
    else:
        assert text == message
    assert server.renames_applied == 0


# -- payload validation --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"user": "u"},
        {"name": None, "user": "u"},
        {"name": "", "user": "u"},
        {"name": "   ", "user": "u"},
        {"name": "\t\n\u3000", "user": "u"},
        {"name": None, "auto_generate": False, "user": "u"},
        {"name": " ", "auto_generate": "no", "user": "u"},
        {},
    ],
)
async def test_missing_or_blank_name_is_invalid_param(server, session, body):
    """Without auto_generate a missing, null or blank name is refused."""
    cid = server.add_conversation(user="u", name="Old")

    reply = await call(session, server, cid, body)

    status, code, message = reply.error()
    assert (status, code) == (400, "invalid_param")
    assert message.startswith("1 validation error for ConversationRenamePayload\n")
    assert "name is required when auto_generate is false" in message
    assert "https://errors.pydantic.dev/" in message
    assert server.get_conversation(cid).name == "Old"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": 123, "user": "u"}, "name\n  Input should be a valid string"),
        ({"name": ["A"], "user": "u"}, "name\n  Input should be a valid string"),
        ({"name": True, "user": "u"}, "name\n  Input should be a valid string"),
        (
            {"name": 5, "auto_generate": True, "user": "u"},
            "name\n  Input should be a valid string",
        ),
        ({"name": "A", "auto_generate": "maybe"}, "unable to interpret input"),
        ({"name": "A", "auto_generate": 2}, "unable to interpret input"),
        ({"name": "A", "auto_generate": 0.5}, "unable to interpret input"),
        ({"name": "A", "auto_generate": " true"}, "unable to interpret input"),
        ({"name": "A", "auto_generate": None}, "Input should be a valid boolean ["),
        ({"name": "A", "auto_generate": []}, "Input should be a valid boolean ["),
        ({"name": "A", "user": 42}, "user\n  Input should be a valid string"),
    ],
)
async def test_wrong_json_types_are_invalid_param(server, session, body, fragment):
    """Values of the wrong type, or a body that is not an object, are refused."""
    cid = server.add_conversation(user="u", name="Old", messages=["Hi"])

    reply = await call(session, server, cid, body)

    status, code, message = reply.error()
    assert (status, code) == (400, "invalid_param")
    assert fragment in message
    assert server.get_conversation(cid).name == "Old"
    assert server.llm_calls == 0


async def test_every_type_error_is_reported(server, session):
    """Several wrong fields give one pydantic-style message listing each."""
    cid = server.add_conversation(user="u")

    reply = await call(session, server, cid, {"name": 1, "auto_generate": "x" * 60})

    message = reply.error()[2]
    assert message.startswith("2 validation errors for ConversationRenamePayload\n")
    assert "[type=string_type, input_value=1, input_type=int]" in message
    assert f"input_value='{'x' * 24}...{'x' * 23}', input_type=str" in message


@pytest.mark.parametrize(
    "data", [b"[]", b'[{"name": "A", "user": "u"}]', b'"x"', b"42", b"null", b"true"]
)
async def test_a_body_that_is_not_an_object_is_a_500(server, session, data):
    """A JSON body that is not an object fails where Dify reads user: 500 unknown."""
    cid = server.add_conversation(user="u", name="Old", messages=["Hi"])

    reply = await call(session, server, cid, data=data)

    assert reply.error() == (500, "unknown", "Internal Server Error")
    assert reply.headers["X-Version"] == server.version
    assert server.get_conversation(cid).rename_count == 0
    assert server.llm_calls == 0


async def test_a_body_that_is_not_an_object_fails_before_the_mode_check(
    server, session
):
    """Dify reads user before it checks the app mode: the 500 beats not_chat_app."""
    cid = server.add_conversation(user="u")

    reply = await call(session, server, cid, data=b"[]", key=server.workflow_api_key)

    assert reply.error()[:2] == (500, "unknown")


@pytest.mark.parametrize("auto_generate", [b"false", b"true"])
async def test_a_name_that_is_not_unicode_is_invalid_param(
    server, session, auto_generate
):
    """A lone surrogate escaped in the JSON cannot be stored: 400, nothing stored."""
    cid = server.add_conversation(user="u", name="Old", messages=["Hi"])
    data = b'{"name": "Trip \\ud800", "auto_generate": %s, "user": "u"}' % auto_generate

    reply = await call(session, server, cid, data=data)

    status, code, message = reply.error()
    assert (status, code) == (400, "invalid_param")
    assert "name\n  Input should be a valid string, unable to parse raw data" in message
    assert "[type=string_unicode, input_value='Trip \\ud800'," in message
    assert server.get_conversation(cid).name == "Old"
    assert server.renames_applied == server.llm_calls == 0


async def test_an_escaped_surrogate_pair_is_a_valid_name(server, session):
    """A surrogate pair escaped in the JSON is one character, stored as such."""
    cid = server.add_conversation(user="u")

    reply = await call(
        session, server, cid, data=b'{"name": "Trip \\ud83d\\ude00", "user": "u"}'
    )

    assert reply.status == 200
    assert server.get_conversation(cid).name == "Trip \U0001f600"


@pytest.mark.parametrize(
    "flag",
    [True, 1, 1.0, "1", "on", "t", "true", "y", "yes", "YES", "True", "On", "T"],
)
async def test_lax_true_values_turn_auto_generate_on(server, session, flag):
    """pydantic's lax true values (JSON true, 1, 'yes', ...) mean auto_generate."""
    cid = server.add_conversation(user="u", name="Old", messages=["Weather in Paris"])

    reply = await rename(session, server, cid, auto_generate=flag, name="X", user="u")

    assert reply.json()["name"] == "Weather in Paris"
    assert server.llm_calls == 1


@pytest.mark.parametrize(
    "flag",
    [False, 0, 0.0, "0", "off", "f", "false", "n", "no", "NO", "False", "OFF"],
)
async def test_lax_false_values_keep_a_manual_rename(server, session, flag):
    """pydantic's lax false values mean an explicit rename."""
    cid = server.add_conversation(user="u", name="Old", messages=["Weather"])

    reply = await rename(session, server, cid, auto_generate=flag, name="X", user="u")

    assert reply.json()["name"] == "X"
    assert server.llm_calls == 0


# -- conversations and users ---------------------------------------------------


async def test_unknown_conversation_is_404(server, session):
    """An id that was never stored answers 404 not_found."""
    reply = await rename(session, server, str(uuid.uuid4()), name="A", user="u")

    assert reply.error() == (404, "not_found", "Conversation Not Exists.")


async def test_another_users_conversation_is_404(server, session):
    """A conversation is only reachable with the user it belongs to."""
    cid = server.add_conversation(user="alice", name="Old")

    reply = await rename(session, server, cid, name="A", user="bob")

    assert reply.error()[:2] == (404, "not_found")
    assert server.get_conversation(cid).name == "Old"


async def test_deleted_conversation_is_404(server, session):
    """After delete_conversation, renames answer 404."""
    cid = server.add_conversation(user="u")
    server.delete_conversation(cid)

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.error()[:2] == (404, "not_found")


@pytest.mark.parametrize("user", [_UNSET, None, "", 0, False])
async def test_missing_user_is_the_default_user(server, session, user):
    """A request without a user addresses DEFAULT-USER's conversations."""
    mine = server.add_conversation(user="u-42")
    anonymous = server.add_conversation(user="DEFAULT-USER")
    body: dict[str, Any] = {"name": "A"}
    if user is not _UNSET:
        body["user"] = user

    missed = await call(session, server, mine, body)
    reached = await call(session, server, anonymous, body)

    assert missed.error()[:2] == (404, "not_found")
    assert reached.status == 200


# -- auto_generate -------------------------------------------------------------


async def test_auto_generate_titles_from_the_first_message(server, session):
    """The generated name comes from the first message; updated_at is untouched."""
    cid = server.add_conversation(
        user="u",
        name="New conversation",
        messages=["  What are the iPhone 15 specs?\n", "And the price?"],
        created_at=1705407629,
    )

    reply = await rename(session, server, cid, auto_generate=True, user="u")

    data = reply.json()
    assert data["name"] == "What are the iPhone 15 specs?"
    assert data["updated_at"] == 1705407629
    stored = server.get_conversation(cid)
    assert stored.name == "What are the iPhone 15 specs?"
    assert stored.updated_at == 1705407629
    assert stored.rename_count == 1
    assert (server.llm_calls, server.renames_applied) == (1, 1)


@pytest.mark.parametrize(
    ("message", "title"),
    [
        ("a" * 75, "a" * 75),
        ("a" * 76, "a" * 75 + "..."),
        ("b" * 300, "b" * 75 + "..."),
        ("", ""),
        ("   ", ""),
    ],
)
async def test_auto_generate_cuts_long_titles(server, session, message, title):
    """Titles over 75 characters are cut to 75 plus '...'; empty ones stay empty."""
    cid = server.add_conversation(user="u", messages=[message])

    reply = await rename(session, server, cid, auto_generate=True, user="u")

    assert reply.json()["name"] == title


async def test_auto_generate_ignores_name(server, session):
    """With auto_generate, a given name is not used."""
    cid = server.add_conversation(user="u", messages=["Trip to Rome"])

    reply = await rename(session, server, cid, auto_generate=True, name="X", user="u")

    assert reply.json()["name"] == "Trip to Rome"


async def test_auto_generate_without_messages_is_invalid_param(server, session):
    """No messages to title from: 400 invalid_param with an empty message."""
    cid = server.add_conversation(user="u", name="Old")

    reply = await rename(session, server, cid, auto_generate=True, user="u")

    assert reply.error() == (400, "invalid_param", "")
    assert server.llm_calls == 0
    assert server.get_conversation(cid).name == "Old"


async def test_failed_llm_call_keeps_the_name_and_answers_200(server, session):
    """When the LLM fails the name stays as it was and the answer is still 200."""
    cid = server.add_conversation(user="u", name="Old", messages=["Hello"])
    server.llm_fails = True

    reply = await rename(session, server, cid, auto_generate=True, user="u")

    assert reply.status == 200
    assert reply.json()["name"] == "Old"
    assert server.get_conversation(cid).rename_count == 0
    assert (server.llm_calls, server.renames_applied) == (1, 0)


async def test_each_auto_generate_pays_for_an_llm_call(server, session):
    """Every auto_generate request makes one more LLM call."""
    cid = server.add_conversation(user="u", messages=["Hello"])

    for _ in range(3):
        await rename(session, server, cid, auto_generate=True, user="u")

    assert server.llm_calls == 3


# -- routing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/conversations/not-a-uuid/name",
        "/conversations/45701982811848bc58e9b64562b4555f2/name",
        "/conversations/{45701982-8118-4bc5-8e9b-64562b4555f2}/name",
        "/conversations/45701982-8118-4bc5-8e9b-64562b4555f2x/name",
        "/conversations/45701982-8118-4bc5-8e9b-64562b4555f2/name/",
        "/conversations/45701982-8118-4bc5-8e9b-64562b4555f2",
        "/conversations",
        "/other",
        "/../",
    ],
)
async def test_unrouted_paths_get_an_html_404(server, session, path):
    """Paths the route does not match answer the framework's HTML 404 page."""
    reply = await call(session, server, "", {"name": "A", "user": "u"}, path=path)

    assert reply.status == 404
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert NOT_FOUND_HTML in reply.body
    assert server.requests_received == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_other_methods_are_405(server, session, method):
    """Any method but POST on the rename route answers 405 method_not_allowed."""
    cid = server.add_conversation(user="u", name="Old")

    reply = await call(session, server, cid, {"name": "A", "user": "u"}, method=method)

    assert reply.error()[:2] == (405, "method_not_allowed")
    assert reply.headers["Allow"] == "POST"
    assert server.get_conversation(cid).name == "Old"
    assert server.requests_received == 0


async def test_head_is_405_without_a_body(server, session):
    """HEAD on the rename route answers 405 too."""
    reply = await call(session, server, str(uuid.uuid4()), method="HEAD")

    assert reply.status == 405
    assert reply.body == b""


# -- faults --------------------------------------------------------------------


async def test_http_fault_replaces_the_answer_before_processing(server, session):
    """An http fault sends its own status, body and headers; nothing is renamed."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(
        Fault.http(
            503, "maintenance", content_type="text/plain", headers={"X-Debug": "1"}
        )
    )

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 503
    assert reply.body == b"maintenance"
    assert reply.headers["Content-Type"] == "text/plain"
    assert reply.headers["X-Debug"] == "1"
    assert "X-Version" not in reply.headers
    assert server.get_conversation(cid).name == "Old"
    assert server.requests_received == 1


async def test_http_fault_can_imitate_a_dify_error(server, session):
    """An http fault can carry a JSON body and Dify's headers."""
    cid = server.add_conversation(user="u")
    body = {"code": "unknown", "message": "Internal Server Error", "status": 500}
    server.inject_fault(
        Fault.http(
            500,
            json.dumps(body).encode(),
            content_type="application/json",
            headers={"X-Version": "1.9.2"},
        )
    )

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.error() == (500, "unknown", "Internal Server Error")
    assert reply.headers["X-Version"] == "1.9.2"


@pytest.mark.parametrize(
    ("status", "title"),
    [
        (502, "502 Bad Gateway"),
        (503, "503 Service Temporarily Unavailable"),
        (504, "504 Gateway Time-out"),
        (500, "500 Internal Server Error"),
        (413, "413 Request Entity Too Large"),
    ],
)
async def test_gateway_fault_is_an_nginx_page(server, session, status, title):
    """A gateway fault answers nginx's HTML page, without Dify's headers."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.gateway(status))

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == status
    assert reply.headers["Content-Type"] == "text/html"
    assert reply.body.startswith(f"<html>\r\n<head><title>{title}</title>".encode())
    assert "X-Version" not in reply.headers
    assert "X-Env" not in reply.headers
    assert server.get_conversation(cid).name == "Old"


async def test_gateway_fault_defaults_to_502(server, session):
    """Fault.gateway() is a 502 Bad Gateway."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway())

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 502
    assert b"502 Bad Gateway" in reply.body


async def test_gateway_fault_after_processing_loses_a_stored_rename(server, session):
    """After processing, the rename is stored although the client sees a 504."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.gateway(504, after_processing=True))

    reply = await rename(session, server, cid, name="New", user="u")

    assert reply.status == 504
    assert server.get_conversation(cid).name == "New"
    assert server.renames_applied == 1


async def test_rate_limit_fault_sends_retry_headers(server, session):
    """A rate-limit fault is a 429 with the Retry-After headers it was given."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.rate_limit(retry_after="3", retry_after_ms="2500"))

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 429
    assert reply.headers["Retry-After"] == "3"
    assert reply.headers["retry-after-ms"] == "2500"
    assert "X-Version" not in reply.headers
    assert "code" not in reply.json()
    assert server.get_conversation(cid).name == "Old"


async def test_rate_limit_fault_without_retry_after(server, session):
    """Without arguments the 429 carries no Retry-After header."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.rate_limit())

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 429
    assert "Retry-After" not in reply.headers
    assert "retry-after-ms" not in reply.headers


async def test_rate_limit_fault_accepts_an_http_date(server, session):
    """Retry-After may be an HTTP date, sent as given."""
    cid = server.add_conversation(user="u")
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.inject_fault(Fault.rate_limit(retry_after=date))

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.headers["Retry-After"] == date


async def test_disconnect_fault_drops_the_connection(server, session):
    """A disconnect fault closes the connection with no answer and no rename."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.disconnect())

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await rename(session, server, cid, name="A", user="u")

    assert server.get_conversation(cid).name == "Old"
    assert server.requests_received == 1
    assert (await rename(session, server, cid, name="A", user="u")).status == 200


async def test_disconnect_after_processing_still_renames(server, session):
    """A disconnect after processing drops the answer of a stored rename."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.disconnect(after_processing=True))

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await rename(session, server, cid, name="New", user="u")

    assert server.get_conversation(cid).name == "New"


async def test_delay_fault_answers_late_but_normally(server, session):
    """A delay fault waits, then answers the rename as usual."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.delay(0.2))

    started = time.monotonic()
    reply = await rename(session, server, cid, name="A", user="u")

    assert time.monotonic() - started >= 0.2
    assert reply.status == 200
    assert server.get_conversation(cid).name == "A"


async def test_delay_fault_before_processing_times_the_client_out(server, session):
    """A client that gives up during a delay before processing finds no rename."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.delay(30))

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(rename(session, server, cid, name="A", user="u"), 0.2)

    assert server.get_conversation(cid).name == "Old"


async def test_delay_fault_after_processing_has_already_renamed(server, session):
    """A client that gives up during a delay after processing finds the rename."""
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.delay(30, after_processing=True))

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(rename(session, server, cid, name="New", user="u"), 0.3)

    assert server.get_conversation(cid).name == "New"


async def test_auto_generate_pays_only_when_processed(server, session):
    """A fault before processing saves the LLM call; one after it does not."""
    cid = server.add_conversation(user="u", name="Old", messages=["Hello"])
    server.inject_fault(Fault.gateway(502))
    server.inject_fault(Fault.gateway(504, after_processing=True))

    first = await rename(session, server, cid, auto_generate=True, user="u")
    assert (first.status, server.llm_calls) == (502, 0)
    second = await rename(session, server, cid, auto_generate=True, user="u")
    assert (second.status, server.llm_calls) == (504, 1)
    assert server.get_conversation(cid).name == "Hello"


async def test_fault_strikes_as_many_times_as_asked(server, session):
    """times=N faults the next N requests, then answers normally."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway(503), times=2)

    statuses = [
        (await rename(session, server, cid, name="A", user="u")).status
        for _ in range(3)
    ]

    assert statuses == [503, 503, 200]


async def test_faults_strike_in_queue_order(server, session):
    """Queued faults are taken first in, first out."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway(502))
    server.inject_fault(Fault.gateway(503))

    statuses = [
        (await rename(session, server, cid, name="A", user="u")).status
        for _ in range(3)
    ]

    assert statuses == [502, 503, 200]


async def test_fault_for_a_conversation_spares_the_others(server, session):
    """A fault tied to one conversation id only strikes requests for that id."""
    target = server.add_conversation(user="u")
    other = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway(503), conversation_id=target.upper())
    server.inject_fault(Fault.gateway(502))

    other_first = await rename(session, server, other, name="A", user="u")
    target_first = await rename(session, server, target, name="A", user="u")
    other_second = await rename(session, server, other, name="A", user="u")

    assert other_first.status == 502
    assert target_first.status == 503
    assert other_second.status == 200

    server.inject_fault(Fault.gateway(504), conversation_id=target)
    assert (await rename(session, server, other, name="A", user="u")).status == 200
    assert (await rename(session, server, target, name="A", user="u")).status == 504


async def test_faults_strike_whatever_the_answer_would_be(server, session):
    """A fault before processing strikes even a request the app would refuse."""
    server.inject_fault(Fault.gateway(502))

    reply = await call(session, server, str(uuid.uuid4()), {"name": "A"}, key="x")

    assert reply.status == 502


async def test_faults_do_not_strike_other_routes(server, session):
    """Only POSTs on the rename route take faults."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway(502))

    await call(session, server, "", path="/conversations")
    await call(session, server, cid, method="GET")
    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 502


async def test_clear_faults_drops_the_queue(server, session):
    """clear_faults removes every queued fault."""
    cid = server.add_conversation(user="u")
    server.inject_fault(Fault.gateway(502), times=5)
    server.clear_faults()

    reply = await rename(session, server, cid, name="A", user="u")

    assert reply.status == 200


def test_fault_arguments_are_checked():
    """Faults and injections refuse arguments that make no sense."""
    fake = FakeDifyServer()
    with pytest.raises(ValueError, match="times"):
        fake.inject_fault(Fault.disconnect(), times=0)
    with pytest.raises(ValueError, match="badly formed"):
        fake.inject_fault(Fault.disconnect(), conversation_id="nope")
    with pytest.raises(ValueError, match="status"):
        Fault.http(99)
    with pytest.raises(ValueError, match="status"):
        Fault.gateway(200)
    with pytest.raises(ValueError, match="seconds"):
        Fault.delay(-1)


def test_faults_are_frozen_values():
    """Faults compare by value and cannot be changed."""
    assert Fault.gateway(503) == Fault.gateway(503)
    assert Fault.http(500, "x") == Fault.http(500, b"x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Fault.disconnect().after_processing = True  # type: ignore[misc]


def test_fault_queue_takes_the_first_match_and_counts_strikes():
    """The queue is first in, first out; a fault leaves it when used up."""
    queue = FaultQueue()
    cid, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert not queue
    assert queue.take(cid) is None

    queue.add(Fault.gateway(502), times=1, conversation_id=other)
    queue.add(Fault.gateway(503), times=2, conversation_id=None)
    queue.add(Fault.gateway(504), times=1, conversation_id=None)

    assert [queue.take(cid) for _ in range(4)] == [
        Fault.gateway(503),
        Fault.gateway(503),
        Fault.gateway(504),
        None,
    ]
    assert len(queue) == 1
    assert queue.take(other) == Fault.gateway(502)
    assert not queue


def test_fault_queue_refuses_zero_times_and_clears():
    queue = FaultQueue()
    with pytest.raises(ValueError, match="at least 1"):
        queue.add(Fault.disconnect(), times=0, conversation_id=None)
    queue.add(Fault.disconnect(), times=3, conversation_id=None)

    queue.clear()

    assert queue.take(str(uuid.uuid4())) is None


# -- statistics ----------------------------------------------------------------


async def test_statistics_count_requests_renames_and_llm_calls(server, session):
    """Statistics count rename requests (refused and faulted ones too)."""
    cid = server.add_conversation(user="u", messages=["Hi"])
    server.inject_fault(Fault.gateway(502))

    await rename(session, server, cid, name="A", user="u")  # faulted
    await rename(session, server, cid, name="A", user="u")
    await rename(session, server, cid, auto_generate=True, user="u")
    await call(session, server, cid, {"name": "A"}, key="app-x")  # 401
    await call(session, server, cid, method="GET")  # 405: not the route's POST
    await call(session, server, "", path="/conversations/x/name")  # HTML 404

    assert server.requests_received == 4
    assert server.renames_applied == 2
    assert server.llm_calls == 1
    assert server.requests_by_conversation == {cid: 4}
    assert server.max_in_flight == 1


async def test_reset_stats_starts_counting_afresh(server, session):
    """reset_stats zeroes every statistic but keeps the conversations."""
    cid = server.add_conversation(user="u", messages=["Hi"])
    await rename(session, server, cid, auto_generate=True, user="u")

    server.reset_stats()

    assert server.requests_received == 0
    assert server.renames_applied == 0
    assert server.llm_calls == 0
    assert server.max_in_flight == 0
    assert server.requests_by_conversation == {}
    assert server.get_conversation(cid).name == "Hi"


async def test_requests_by_conversation_is_a_copy(server, session):
    """Changing the returned counter does not change the server's."""
    cid = server.add_conversation(user="u")
    await rename(session, server, cid, name="A", user="u")

    counts = server.requests_by_conversation
    counts[cid] += 10

    assert server.requests_by_conversation[cid] == 1


async def test_latency_slows_every_rename_and_shows_concurrency(session):
    """latency delays each rename; max_in_flight sees concurrent requests."""
    async with FakeDifyServer(latency=0.2) as fake:
        ids = [fake.add_conversation(user="u") for _ in range(10)]
        started = time.monotonic()
        replies = await asyncio.gather(
            *(rename(session, fake, cid, name="A", user="u") for cid in ids)
        )
        elapsed = time.monotonic() - started

    assert {reply.status for reply in replies} == {200}
    assert 0.2 <= elapsed < 1.5
    assert fake.max_in_flight == 10


def test_negative_latency_is_refused():
    """A negative latency is a mistake."""
    with pytest.raises(ValueError, match="latency"):
        FakeDifyServer(latency=-1)


# -- seeding and reading state -------------------------------------------------


def test_add_conversation_returns_a_lower_case_uuid4():
    """New ids are random lower-case UUID4 strings."""
    fake = FakeDifyServer()

    cid = fake.add_conversation(user="u")

    assert uuid.UUID(cid).version == 4
    assert cid == cid.lower()
    assert fake.add_conversation(user="u") != cid


def test_add_conversation_defaults():
    """A seeded conversation gets Dify's defaults and created_at = updated_at = now."""
    fake = FakeDifyServer()
    before = int(time.time())

    stored = fake.get_conversation(fake.add_conversation(user="u"))

    assert stored.name == "New conversation"
    assert stored.inputs == {}
    assert stored.status == "normal"
    assert stored.introduction == ""
    assert stored.messages == ()
    assert stored.rename_count == 0
    assert before <= stored.created_at <= int(time.time())  # type: ignore[operator]
    assert stored.updated_at == stored.created_at


def test_add_conversation_with_a_chosen_id():
    """A chosen id is stored in lower case; taking it twice is an error."""
    fake = FakeDifyServer()
    chosen = "45701982-8118-4BC5-8E9B-64562B4555F2"

    cid = fake.add_conversation(user="u", conversation_id=chosen, created_at=5)

    assert cid == chosen.lower()
    assert fake.get_conversation(chosen).created_at == 5
    with pytest.raises(ValueError, match="already exists"):
        fake.add_conversation(user="v", conversation_id=cid)


def test_add_conversation_refuses_bad_arguments():
    """Empty users, malformed ids, bare-string messages, odd inputs are refused."""
    fake = FakeDifyServer()
    with pytest.raises(ValueError, match="user"):
        fake.add_conversation(user="")
    with pytest.raises(ValueError, match="badly formed"):
        fake.add_conversation(user="u", conversation_id="nope")
    with pytest.raises(TypeError, match="messages"):
        fake.add_conversation(user="u", messages="Hello")
    with pytest.raises(TypeError, match="JSON"):
        fake.add_conversation(user="u", inputs={"when": object()})
    assert fake.conversations == []


def test_get_conversation_returns_a_snapshot():
    """A snapshot does not follow later changes, nor leak changes back."""
    fake = FakeDifyServer()
    inputs = {"nested": {"a": 1}}
    cid = fake.add_conversation(user="u", inputs=inputs, messages=["m1", "m2"])
    inputs["nested"]["a"] = 2

    snapshot = fake.get_conversation(cid)
    snapshot.inputs["nested"]["a"] = 3

    assert fake.get_conversation(cid).inputs == {"nested": {"a": 1}}
    assert isinstance(snapshot, StoredConversation)
    assert snapshot.messages == ("m1", "m2")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snapshot.name = "x"  # type: ignore[misc]


def test_unknown_conversations_raise_key_error():
    """Reading or deleting an unknown or malformed id raises KeyError."""
    fake = FakeDifyServer()
    missing = str(uuid.uuid4())
    for action in (fake.get_conversation, fake.delete_conversation):
        with pytest.raises(KeyError):
            action(missing)
        with pytest.raises(KeyError):
            action("not-a-uuid")


def test_conversations_lists_snapshots_in_order():
    """conversations lists every stored conversation, oldest first."""
    fake = FakeDifyServer()
    first = fake.add_conversation(user="a")
    second = fake.add_conversation(user="b")
    fake.delete_conversation(first)
    third = fake.add_conversation(user="c")

    assert [c.id for c in fake.conversations] == [second, third]


# -- lifecycle -----------------------------------------------------------------


async def test_base_url_needs_a_running_server():
    """base_url is only known while the server runs."""
    fake = FakeDifyServer()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url
    async with fake:
        assert fake.base_url.startswith("http://127.0.0.1:")
        assert fake.base_url.endswith("/v1")
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url


async def test_starting_twice_is_an_error_and_stopping_twice_is_not():
    """start() refuses a running server; stop() may be called again."""
    fake = FakeDifyServer()
    await fake.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            await fake.start()
        with pytest.raises(RuntimeError, match="already running"):
            fake.start_in_thread()
    finally:
        await fake.stop()
    await fake.stop()


async def test_server_restarts_with_its_conversations(session):
    """A stopped server can start again and keeps its state."""
    fake = FakeDifyServer()
    cid = fake.add_conversation(user="u")
    async with fake:
        await rename(session, fake, cid, name="A", user="u")
    async with fake:
        reply = await rename(session, fake, cid, name="B", user="u")

    assert reply.json()["name"] == "B"
    assert fake.get_conversation(cid).rename_count == 2


async def test_fixed_port_and_bind_errors():
    """A chosen port is used; a taken one fails start() with OSError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with FakeDifyServer(port=port) as fake:
        assert fake.base_url == f"http://127.0.0.1:{port}/v1"
        with pytest.raises(OSError, match=str(port)):
            await FakeDifyServer(port=port).start()
        with pytest.raises(OSError, match=str(port)):
            FakeDifyServer(port=port).start_in_thread()


async def test_ipv6_base_url_uses_brackets():
    """An IPv6 host is bracketed in base_url."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        fake = FakeDifyServer(host="::1")
        await fake.start()
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    try:
        assert fake.base_url.startswith("http://[::1]:")
    finally:
        await fake.stop()


async def test_stop_drops_requests_that_are_still_waiting(session):
    """Stopping does not wait for a long delay fault: the request is dropped."""
    fake = FakeDifyServer()
    await fake.start()
    cid = fake.add_conversation(user="u", name="Old")
    fake.inject_fault(Fault.delay(60))
    pending = asyncio.create_task(rename(session, fake, cid, name="A", user="u"))
    await until_received(fake)

    started = time.monotonic()
    await fake.stop()

    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    assert fake.get_conversation(cid).name == "Old"


# -- clients that go away --------------------------------------------------------


async def until_idle(fake: FakeDifyServer) -> None:
    """Wait until the server has finished handling every request."""
    for _ in range(500):
        if fake._state.in_flight == 0:
            return
        await asyncio.sleep(0.01)
    pytest.fail("a request is still being handled")


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]


async def send_and_abandon(fake: FakeDifyServer, cid: str, *, body_sent: int) -> None:
    """Send a rename's head and *body_sent* bytes of its body, then hang up."""
    body = json.dumps({"name": "A", "user": "u"}).encode()
    head = (
        f"POST /v1/conversations/{cid}/name HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        f"Authorization: Bearer {fake.api_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    address = urllib.parse.urlsplit(fake.base_url)
    _, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(head.encode() + body[:body_sent])
        await writer.drain()
        await until_received(fake)
    finally:
        writer.close()
        await writer.wait_closed()


@attrs.frozen
class HangUp:
    """When a client hangs up, and whether the rename was stored by then."""

    fault: Fault | None = None
    latency: float = 0.0
    body_sent: int = 999
    renamed: bool = False


@pytest.mark.parametrize(
    "hang_up",
    [
        pytest.param(HangUp(body_sent=5), id="mid-body"),
        pytest.param(HangUp(fault=Fault.delay(0.3)), id="during-delay"),
        pytest.param(HangUp(latency=0.3), id="during-latency"),
        pytest.param(
            HangUp(fault=Fault.delay(0.3, after_processing=True), renamed=True),
            id="after-rename",
        ),
    ],
)
async def test_a_client_that_hangs_up_is_not_an_error(server, caplog, hang_up):
    """A request abandoned by its client ends quietly: no ERROR log record."""
    caplog.set_level(logging.DEBUG)
    cid = server.add_conversation(user="u", name="Old")
    server.latency = hang_up.latency
    if hang_up.fault is not None:
        server.inject_fault(hang_up.fault)

    await send_and_abandon(server, cid, body_sent=hang_up.body_sent)
    await until_idle(server)

    assert errors_logged(caplog) == []
    assert server.get_conversation(cid).name == ("A" if hang_up.renamed else "Old")


async def test_a_request_cancelled_during_a_delay_is_not_an_error(
    server, session, caplog
):
    """Cancelling a client's request while a delay fault holds it logs no error."""
    caplog.set_level(logging.DEBUG)
    cid = server.add_conversation(user="u", name="Old")
    server.inject_fault(Fault.delay(0.3))
    pending = asyncio.create_task(rename(session, server, cid, name="A", user="u"))
    await until_received(server)

    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await until_idle(server)

    assert errors_logged(caplog) == []
    assert server.get_conversation(cid).name == "Old"


# -- thread mode ---------------------------------------------------------------


def _sync_rename(fake: FakeDifyServer, cid: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 (a local http URL)
        f"{fake.base_url}/conversations/{cid}/name",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {fake.api_key}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        return json.load(response)


def test_thread_mode_serves_synchronous_code():
    """In a with block the server runs in a thread that blocking code can call."""
    with FakeDifyServer() as fake:
        cid = fake.add_conversation(user="u", messages=["Hello there"])
        renamed = _sync_rename(fake, cid, {"auto_generate": True, "user": "u"})
        assert renamed["name"] == "Hello there"
        with pytest.raises(urllib.error.HTTPError) as caught:
            _sync_rename(fake, cid, {"user": "u"})
        assert caught.value.code == 400
        caught.value.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.base_url


async def test_thread_mode_start_and_stop_rules():
    """A threaded server refuses a second start and stops only with stop_thread."""
    fake = FakeDifyServer()
    fake.stop_thread()
    fake.start_in_thread()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            fake.start_in_thread()
        with pytest.raises(RuntimeError, match="already running"):
            await fake.start()
        with pytest.raises(RuntimeError, match="stop_thread"):
            await fake.stop()
    finally:
        fake.stop_thread()
    fake.stop_thread()
    fake.start_in_thread()
    fake.stop_thread()


async def test_thread_mode_serves_this_event_loop(session):
    """A threaded server answers an async client while it is seeded from the test."""
    fake = FakeDifyServer()
    fake.start_in_thread()
    try:
        cid = fake.add_conversation(user="u")
        fake.inject_fault(Fault.gateway(503))
        statuses = [
            (await rename(session, fake, cid, name="A", user="u")).status
            for _ in range(2)
        ]
    finally:
        fake.stop_thread()

    assert statuses == [503, 200]
    assert fake.get_conversation(cid).name == "A"


async def test_thread_mode_stop_drops_waiting_requests(session):
    """stop_thread returns promptly even while a request waits on a delay."""
    fake = FakeDifyServer()
    fake.start_in_thread()
    cid = fake.add_conversation(user="u")
    fake.inject_fault(Fault.delay(60))
    pending = asyncio.create_task(rename(session, fake, cid, name="A", user="u"))
    await until_received(fake)

    started = time.monotonic()
    await asyncio.to_thread(fake.stop_thread)

    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending


async def test_thousands_of_concurrent_renames():
    """Two thousand concurrent slow renames all succeed and none is lost."""
    count = 2000
    with FakeDifyServer(latency=0.05) as fake:
        ids = [fake.add_conversation(user="u") for _ in range(count)]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:
            replies = await asyncio.gather(
                *(
                    rename(client, fake, cid, name=f"Ticket {n}", user="u")
                    for n, cid in enumerate(ids)
                )
            )

    assert [reply.json()["name"] for reply in replies] == [
        f"Ticket {n}" for n in range(count)
    ]
    assert fake.renames_applied == count
    assert fake.requests_received == count
    assert fake.max_in_flight > 100


def test_state_is_safe_to_seed_from_many_threads():
    """add_conversation from several threads at once loses nothing."""
    fake = FakeDifyServer()

    def seed() -> None:
        for _ in range(200):
            fake.add_conversation(user="u")

    threads = [threading.Thread(target=seed) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(fake.conversations) == 800


# -- the pytest fixture ----------------------------------------------------------


def test_the_testing_package_imports_its_names_lazily():
    """The public names resolve on first use; an unknown name is an error."""
    from dify_async import testing  # noqa: PLC0415

    assert testing.FakeDifyServer is FakeDifyServer
    assert testing.StoredConversation is StoredConversation
    with pytest.raises(AttributeError, match="has no attribute 'FaultQueue'"):
        _ = testing.FaultQueue


def test_dify_server_fixture_in_a_sync_test(dify_server):
    """The dify_server fixture gives a running server to synchronous tests."""
    cid = dify_server.add_conversation(user="u")

    renamed = _sync_rename(dify_server, cid, {"name": "Sync", "user": "u"})

    assert renamed["name"] == "Sync"
    assert dify_server.get_conversation(cid).name == "Sync"


async def test_dify_server_fixture_in_an_async_test(dify_server, session):
    """The dify_server fixture works under pytest-asyncio too."""
    cid = dify_server.add_conversation(user="u", messages=["Async"])

    reply = await rename(session, dify_server, cid, auto_generate=True, user="u")

    assert reply.json()["name"] == "Async"
    assert isinstance(dify_server, FakeDifyServer)


def test_dify_server_fixture_is_fresh_per_test(dify_server):
    """Each test gets its own server with no conversations and no statistics."""
    assert dify_server.conversations == []
    assert dify_server.requests_received == 0
