"""The sans-I/O core: request building and response decoding, no network."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import yarl
from hypothesis import example, given
from hypothesis import strategies as st

from dify_async import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    Conversation,
    InternalServerError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RenameRequest,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from dify_async._sansio import (
    Endpoint,
    build_request,
    decode_response,
    excerpt,
    make_endpoint,
)
from dify_async._validation import normalize_base_url

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
URL = f"https://api.dify.ai/v1/conversations/{CID}/name"
SUCCESS = {
    "id": CID,
    "name": "iPhone Specs Chat",
    "inputs": {"city": "San Francisco"},
    "status": "normal",
    "introduction": "Welcome! How can I help you today?",
    "created_at": 1705407629,
    "updated_at": 1705411229,
}
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
FLASK_404 = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>"
    b"\n<p>The requested URL was not found on the server.</p>\n"
)


ENDPOINT = make_endpoint("https://h/v1", "app-k", "ua")
REQUEST = build_request(
    make_endpoint("https://api.dify.ai/v1", "app-k", "ua"), RenameRequest(CID, "u", "n")
)


def dify_error(status: int, code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message, "status": status}).encode()


class TestBuildRequest:
    def test_posts_json_to_the_conversation_name_route(self):
        """The request is POST {base}/conversations/{id}/name with a JSON body."""
        request = RenameRequest(CID.upper(), "abc-123", "iPhone Specs Chat")
        prepared = build_request(
            make_endpoint("https://api.dify.ai/v1", "app-k", "ua"), request
        )
        assert prepared.method == "POST"
        assert prepared.url == URL
        assert prepared.conversation_id == CID
        assert prepared.idempotent
        assert json.loads(prepared.body) == {
            "name": "iPhone Specs Chat",
            "auto_generate": False,
            "user": "abc-123",
        }

    def test_auto_generate_leaves_the_name_out(self):
        """An auto_generate rename sends a real JSON boolean and no name."""
        request = RenameRequest(CID, "abc-123", auto_generate=True)
        prepared = build_request(ENDPOINT, request)
        assert json.loads(prepared.body) == {"auto_generate": True, "user": "abc-123"}
        assert not prepared.idempotent

    def test_name_is_sent_exactly_as_given(self):
        """Names keep their white space and Unicode: Dify stores them unstripped."""
        name = "  Ünïcödé ✈ trip \n"
        request = RenameRequest(CID, "u", name)
        assert json.loads(build_request(ENDPOINT, request).body)["name"] == name

    def test_headers_carry_bearer_key_json_and_user_agent(self):
        """Every request authenticates with a bearer token and says it is JSON."""
        endpoint = make_endpoint("https://h/v1", "app-secret", "dify-async/1")
        prepared = build_request(endpoint, RenameRequest(CID, "u", "n"))
        assert prepared.headers["Authorization"] == "Bearer app-secret"
        assert prepared.headers["Content-Type"] == "application/json"
        assert prepared.headers["User-Agent"] == "dify-async/1"

    def test_the_key_stays_out_of_reprs(self):
        """Neither the endpoint nor a prepared request shows the key or body."""
        endpoint = make_endpoint("https://h/v1", "app-secret", "ua")
        prepared = build_request(endpoint, RenameRequest(CID, "u", "n"))
        assert "app-secret" not in repr(endpoint)
        assert "app-secret" not in repr(prepared)
        assert isinstance(endpoint, Endpoint)


_SEGMENT = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="/?#"
    ),
    min_size=1,
    max_size=8,
)


class TestRequestUrl:
    @given(
        scheme=st.sampled_from(["http", "https"]),
        host=st.sampled_from(
            ["api.dify.ai", "127.0.0.1", "[::1]", "dify.internal", "bücher.example"]
        ),
        port=st.none() | st.integers(1, 65535),
        segments=st.lists(_SEGMENT, max_size=3),
        trailing_slash=st.booleans(),
    )
    @example(
        scheme="https",
        host="api.dify.ai",
        port=None,
        segments=["v1"],
        trailing_slash=False,
    )
    @example(
        scheme="http", host="127.0.0.1", port=5001, segments=[], trailing_slash=True
    )
    @example(
        scheme="https",
        host="h",
        port=None,
        segments=["a b", "%41", "ü"],
        trailing_slash=False,
    )
    def test_the_url_handed_to_aiohttp_is_the_url_built(
        self, scheme, host, port, segments, trailing_slash
    ):
        """The parsed URL the request goes to spells exactly its ``url``.

        ``url`` is what errors and logs show; ``target``, made from the parsed
        base URL, is what aiohttp sends: they must never differ, whatever the
        base URL (a path prefix or none, a port, escapes, a non-ASCII host).
        """
        authority = host if port is None else f"{host}:{port}"
        path = "/".join(segments) + ("/" if trailing_slash else "")
        base_url = normalize_base_url(f"{scheme}://{authority}/{path}")
        endpoint = make_endpoint(base_url, "app-k", "ua")
        prepared = build_request(endpoint, RenameRequest(CID, "u", "n"))
        assert prepared.url == f"{base_url}/conversations/{CID}/name"
        assert str(prepared.target) == prepared.url
        assert prepared.target == yarl.URL(prepared.url, encoded=True)
        assert prepared.target.raw_path.endswith(f"/conversations/{CID}/name")
        assert "//" not in prepared.target.raw_path


class TestBaseUrl:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            ("https://api.dify.ai/v1", "https://api.dify.ai/v1"),
            ("https://api.dify.ai/v1/", "https://api.dify.ai/v1"),
            ("http://localhost:5001/v1", "http://localhost:5001/v1"),
            (" https://dify.example.com/api/v1/ ", "https://dify.example.com/api/v1"),
        ],
    )
    def test_trailing_slash_and_spaces_are_fine(self, given, expected):
        """A trailing slash or surrounding space in the base URL is dropped."""
        assert normalize_base_url(given) == expected

    @pytest.mark.parametrize(
        ("given", "fragment"),
        [
            ("api.dify.ai/v1", "absolute"),
            ("ftp://api.dify.ai/v1", "absolute"),
            ("https://user:pw@api.dify.ai/v1", "credentials"),
            ("https://api.dify.ai/v1?x=1", "query"),
            ("https://api.dify.ai/v1#top", "fragment"),
        ],
    )
    def test_unusable_base_urls_are_refused(self, given, fragment):
        """A base URL that cannot work is refused with a reason."""
        with pytest.raises(InvalidRequestError, match=fragment) as info:
            normalize_base_url(given)
        assert "pw" not in str(info.value)

    def test_non_string_base_url_is_refused(self):
        """A base URL that is not a string is refused, naming the type."""
        with pytest.raises(InvalidRequestError, match="int"):
            normalize_base_url(5)  # type: ignore[arg-type]


class TestDecodeSuccess:
    def test_contract_example_decodes(self):
        """The documented success body becomes a Conversation with UTC datetimes."""
        conversation = decode_response(200, {}, json.dumps(SUCCESS).encode())
        assert conversation == Conversation(
            id=CID,
            name="iPhone Specs Chat",
            inputs={"city": "San Francisco"},
            status="normal",
            introduction="Welcome! How can I help you today?",
            created_at=datetime(2024, 1, 16, 12, 20, 29, tzinfo=timezone.utc),
            updated_at=datetime(2024, 1, 16, 13, 20, 29, tzinfo=timezone.utc),
        )
        assert conversation.created_at is not None
        assert conversation.created_at.tzinfo is timezone.utc

    def test_unknown_keys_and_nulls_are_tolerated(self):
        """New server fields are ignored; null timestamps and intro become None."""
        body = {
            **SUCCESS,
            "introduction": None,
            "created_at": None,
            "updated_at": None,
            "from_source": "api",
            "read_at": 1,
        }
        conversation = decode_response(200, {}, json.dumps(body).encode())
        assert conversation.introduction is None
        assert conversation.created_at is None
        assert conversation.updated_at is None

    def test_id_is_lower_cased_and_name_kept(self):
        """The id comes back lower case; the name exactly as the server sent it."""
        body = {**SUCCESS, "id": CID.upper(), "name": "  padded  "}
        conversation = decode_response(200, {}, json.dumps(body).encode())
        assert conversation.id == CID
        assert conversation.name == "  padded  "

    def test_other_status_strings_are_kept(self):
        """A status other than 'normal' is kept as an opaque string."""
        body = {**SUCCESS, "status": "archived"}
        assert decode_response(200, {}, json.dumps(body).encode()).status == "archived"

    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            (b"", "not JSON"),
            (b"<html>ok</html>", "not JSON"),
            (b'{"id": "x", "name": "a"', "not JSON"),
            (b"[1, 2]", "JSON list"),
            (b'"text"', "JSON str"),
            (b'{"result": "success"}', "not a conversation"),
            (json.dumps({**SUCCESS, "name": 123}).encode(), "body.name"),
            (json.dumps({**SUCCESS, "inputs": []}).encode(), "body.inputs"),
            (json.dumps({**SUCCESS, "created_at": "yesterday"}).encode(), "created"),
            (json.dumps({**SUCCESS, "updated_at": True}).encode(), "updated"),
            (json.dumps({**SUCCESS, "created_at": 10**20}).encode(), "created"),
            (b"\xff\xfe\x00", "not JSON"),
        ],
    )
    def test_a_2xx_that_is_not_a_conversation_raises(self, body, fragment):
        """A success whose body is not a conversation is a validation error."""
        with pytest.raises(APIResponseValidationError, match=fragment) as info:
            decode_response(200, {"X-Version": "1.9.2"}, body, request=REQUEST)
        assert info.value.status_code == 200
        assert info.value.server_version == "1.9.2"
        assert info.value.url == URL


CONTRACT_ERRORS = [
    (400, "invalid_param", "Name is required", BadRequestError),
    (400, "invalid_param", "", BadRequestError),
    (400, "bad_request", "Failed to decode JSON object", BadRequestError),
    (400, "not_chat_app", "Please check if your app mode matches", BadRequestError),
    (401, "unauthorized", "Access token is invalid", AuthenticationError),
    (
        403,
        "forbidden",
        "The app's API service has been disabled.",
        PermissionDeniedError,
    ),
    (404, "not_found", "Conversation Not Exists.", NotFoundError),
    (405, "method_not_allowed", "The method is not allowed", MethodNotAllowedError),
    (415, "unsupported_media_type", "Did not attempt", UnsupportedMediaTypeError),
    (429, "too_many_requests", "Too many requests", RateLimitError),
    (500, "unknown", "Internal Server Error", InternalServerError),
]


class TestDecodeErrors:
    @pytest.mark.parametrize(("status", "code", "message", "cls"), CONTRACT_ERRORS)
    def test_every_dify_error_maps_to_its_class_with_code(
        self, status, code, message, cls
    ):
        """Each of Dify's JSON errors raises its class, carrying status and code."""
        headers = {"X-Version": "1.9.2", "X-Env": "PRODUCTION"}
        with pytest.raises(cls) as info:
            decode_response(
                status, headers, dify_error(status, code, message), request=REQUEST
            )
        error = info.value
        assert type(error) is cls
        assert error.status_code == status
        assert error.code == code
        assert error.message == message
        assert error.body == {"code": code, "message": message, "status": status}
        assert error.server_version == "1.9.2"
        assert error.method == "POST"
        assert error.url == URL
        assert code in str(error)
        assert URL in str(error)

    def test_empty_message_is_shown_as_empty(self):
        """auto_generate with no messages: the empty message reads clearly."""
        with pytest.raises(BadRequestError) as info:
            decode_response(400, {}, dify_error(400, "invalid_param", ""))
        assert info.value.message == ""
        assert str(info.value).startswith("400 invalid_param: (empty message)")

    def test_html_404_from_routing_maps_by_status(self):
        """A non-UUID path's HTML 404 is a NotFoundError without a code."""
        headers = {"Content-Type": "text/html; charset=utf-8"}
        with pytest.raises(NotFoundError) as info:
            decode_response(404, headers, FLASK_404)
        assert info.value.code is None
        assert "404 Not Found" in info.value.message
        assert "<" not in info.value.message

    @pytest.mark.parametrize("status", [502, 503, 504])
    def test_gateway_html_pages_map_by_status(self, status):
        """Gateway HTML pages map to InternalServerError with a short excerpt."""
        body = NGINX_502.replace(b"502 Bad Gateway", f"{status} Gateway".encode())
        with pytest.raises(InternalServerError) as info:
            decode_response(status, {"Content-Type": "text/html"}, body)
        assert info.value.code is None
        assert info.value.status_code == status
        assert info.value.server_version is None
        assert f"{status} Gateway" in info.value.message
        assert "<" not in str(info.value)

    def test_plain_text_gateway_body_is_excerpted(self):
        """A long plain-text body is cut to a short, single-line excerpt."""
        body = b"upstream connect error or disconnect/reset before headers\n" * 50
        with pytest.raises(InternalServerError) as info:
            decode_response(503, {"Content-Type": "text/plain"}, body)
        assert len(info.value.message) < 400
        assert "\n" not in info.value.message
        assert isinstance(info.value.body, str)

    def test_413_from_a_proxy(self):
        """A proxy's 413 is a RequestTooLargeError."""
        with pytest.raises(RequestTooLargeError):
            decode_response(413, {}, b"<html><title>413 Request Entity Too Large")

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"Retry-After": "7"}, 7.0),
            ({"retry-after-ms": "1500"}, 1.5),
            ({"Retry-After": "3600"}, 3600.0),
            ({"Retry-After": "soon"}, None),
            ({}, None),
        ],
    )
    def test_rate_limit_carries_retry_after(self, headers, expected):
        """A 429 carries the wait the server asked for, even above any cap."""
        with pytest.raises(RateLimitError) as info:
            decode_response(429, headers, b"Too Many Requests")
        assert info.value.retry_after == expected

    def test_redirect_is_not_followed_and_says_where(self):
        """A 3xx names its Location (without a query) and what to fix."""
        headers = {"Location": "https://api.dify.ai/v1/conversations?token=secret"}
        with pytest.raises(APIStatusError) as info:
            decode_response(301, headers, b"")
        assert type(info.value) is APIStatusError
        assert "https://api.dify.ai/v1/conversations" in info.value.message
        assert "secret" not in str(info.value)
        assert "base_url" in info.value.message

    def test_redirect_without_location(self):
        """A 3xx without a Location still explains itself."""
        with pytest.raises(APIStatusError, match="without a Location"):
            decode_response(302, {}, b"")

    @pytest.mark.parametrize("status", [418, 451, 501, 599, 600, 999, 0, 99])
    def test_unlisted_statuses_still_raise_status_errors(self, status):
        """Other statuses raise APIStatusError; 500-599 an InternalServerError."""
        with pytest.raises(APIStatusError) as info:
            decode_response(status, {}, b"nope")
        assert info.value.status_code == status
        is_5xx = 500 <= status < 600
        assert isinstance(info.value, InternalServerError) == is_5xx
        if not is_5xx:
            assert type(info.value) is APIStatusError

    def test_json_error_that_is_not_difys_has_no_code(self):
        """A gateway's own JSON error keeps the body but has no Dify code."""
        with pytest.raises(RateLimitError) as info:
            decode_response(429, {}, b'{"error": {"message": "slow down"}}')
        assert info.value.code is None
        assert info.value.body == {"error": {"message": "slow down"}}

    def test_headers_are_case_insensitive(self):
        """Lower-case header names from any transport are read."""
        with pytest.raises(NotFoundError) as info:
            decode_response(
                404, {"x-version": "1.4.0"}, dify_error(404, "not_found", "")
            )
        assert info.value.server_version == "1.4.0"


class TestExcerpt:
    def test_title_of_html(self):
        """An HTML page is summarised by its title."""
        assert excerpt(NGINX_502, "text/html") == "502 Bad Gateway"

    def test_html_without_title_loses_its_tags(self):
        """Tags are stripped from HTML without a title."""
        assert excerpt(b"<p>Service <b>down</b></p>") == "Service down"

    def test_control_characters_are_removed(self):
        """Terminal escapes in a body cannot reach a log line."""
        assert excerpt(b"bad\x1b[31mred\x00") == "bad [31mred"


class TestAnswerForARequest:
    """What decoding decides once it knows the request: id, limit, key."""

    SECRET_REQUEST = build_request(
        make_endpoint("https://h/v1", "app-s3cret", "ua"), RenameRequest(CID, "u", "n")
    )

    def test_a_success_for_another_conversation_is_refused(self):
        """A 2xx carrying another id is not the requested conversation."""
        other = {**SUCCESS, "id": "00000000-0000-4000-8000-000000000000"}
        with pytest.raises(APIResponseValidationError, match="another"):
            decode_response(200, {}, json.dumps(other).encode(), request=REQUEST)

    def test_the_same_id_spelled_otherwise_is_accepted(self):
        """Upper case, or no hyphens, is the same UUID."""
        for spelling in (CID.upper(), CID.replace("-", "")):
            body = json.dumps({**SUCCESS, "id": spelling}).encode()
            assert (
                decode_response(200, {}, body, request=REQUEST).name
                == "iPhone Specs Chat"
            )

    @pytest.mark.parametrize(
        ("status", "cls"),
        [(200, APIResponseValidationError), (502, InternalServerError)],
    )
    def test_a_body_not_read_whole_is_refused_without_a_body(self, status, cls):
        """complete=False: the limit was passed; no body is kept."""
        with pytest.raises(cls) as info:
            decode_response(status, {}, b"", request=REQUEST, complete=False)
        assert info.value.body is None
        assert "max_response_size" in info.value.message

    @pytest.mark.parametrize(
        "body",
        [
            b'{"code": "bad", "message": "Bearer app-s3cret is wrong", "status": 400}',
            b'{"code": "bad", "message": "\\u0061pp-s3cret", "status": 400}',
            json.dumps({"code": "bad", "message": "app-s3cret", "status": 400}).encode(
                "utf-16"
            ),
            b"<html><title>app-s3cret</title></html>",
        ],
    )
    def test_an_echoed_key_is_redacted(self, body):
        """The key is replaced however the server spelled it."""
        headers = {"X-Echo": "Bearer app-s3cret", "app-s3cret": "x"}
        with pytest.raises(BadRequestError) as info:
            decode_response(400, headers, body, request=self.SECRET_REQUEST)
        error = info.value
        for text in (str(error), repr(error.body), repr(dict(error.headers))):
            assert "s3cret" not in text
        assert "***" in str(error) + repr(error.body) + repr(dict(error.headers))

    def test_deep_nesting_is_not_json(self):
        """JSON nested past the interpreter's limit is an excerpt, not a crash."""
        body = b"[" * 100_000 + b"]" * 100_000
        with pytest.raises(APIResponseValidationError, match="not JSON"):
            decode_response(200, {}, body, request=REQUEST)
        with pytest.raises(InternalServerError) as info:
            decode_response(500, {}, body, request=REQUEST)
        assert isinstance(info.value.body, str)

    def test_a_location_with_a_raw_byte_is_shown_safely(self):
        """A redirect whose Location is not UTF-8 still gives its message."""
        location = b"https://h/\xff/v1".decode("utf-8", "surrogateescape")
        with pytest.raises(APIStatusError) as info:
            decode_response(302, {"Location": location}, b"", request=REQUEST)
        str(info.value).encode()  # printable and encodable
