"""Decoding any response: a Conversation or a DifyError, never anything else."""

from __future__ import annotations

import json
import pickle
from datetime import timezone

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dify_async import (
    APIResponseValidationError,
    APIStatusError,
    Conversation,
    DifyError,
    RateLimitError,
    RenameRequest,
)
from dify_async._sansio import build_request, decode_response, make_endpoint

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
REQUEST = build_request(
    make_endpoint("https://h/v1", "app-k", "ua"), RenameRequest(CID, "u", "n")
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
timestamps = (
    st.none()
    | st.integers(-(2**63), 2**63)
    | st.floats()
    | st.text(max_size=12)
    | st.booleans()
)
conversation_fields = {
    "id": st.just(CID) | st.just(CID.upper()) | json_values,
    "name": st.text() | json_values,
    "inputs": st.dictionaries(st.text(max_size=8), json_values, max_size=3)
    | json_values,
    "status": st.just("normal") | json_values,
    "introduction": st.none() | st.text() | json_values,
    "created_at": timestamps,
    "updated_at": timestamps,
}
conversation_like = st.fixed_dictionaries(
    {}, optional=conversation_fields
) | st.fixed_dictionaries(conversation_fields, optional={"extra": json_values})
dify_errors = st.fixed_dictionaries(
    {},
    optional={
        "code": st.text(max_size=20) | json_values,
        "message": st.text(max_size=40) | json_values,
        "status": st.integers(0, 999) | json_values,
    },
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | conversation_like.map(lambda v: json.dumps(v).encode())
    | dify_errors.map(lambda v: json.dumps(v).encode())
    | st.text(max_size=300).map(lambda t: f"<html><title>{t}</title>".encode())
)
header_names = st.sampled_from(
    [
        "Content-Type",
        "Retry-After",
        "retry-after-ms",
        "Location",
        "X-Version",
        "X-Env",
        "WWW-Authenticate",
    ]
) | st.text(min_size=1, max_size=12)
header_values = (
    st.text(max_size=60)
    | st.sampled_from(["text/html", "application/json", "text/plain; charset=utf-8"])
    | st.integers(-5, 10**6).map(str)
)
headers = st.dictionaries(header_names, header_values, max_size=5)
statuses = st.integers(100, 599) | st.integers(0, 999)


def decode_or_error(
    status: int, headers: dict[str, str], body: bytes
) -> Conversation | DifyError:
    """What decoding gives: the conversation, or the DifyError it raised."""
    try:
        return decode_response(status, headers, body, request=REQUEST)
    except DifyError as error:
        return error


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, headers=headers, body=bodies)
@example(status=200, headers={}, body=b'{"id": "%s", "name": "x"}' % CID.encode())
@example(status=200, headers={}, body=b'{"id": 1, "name": "x", "created_at": 1e400}')
@example(status=429, headers={"Retry-After": "9" * 400}, body=b"")
@example(status=302, headers={"Location": "http://\x00/?token=x"}, body=b"")
@example(status=200, headers={}, body=b"\xef\xbb\xbf{}")
@example(status=200, headers={}, body=b"NaN")
@example(status=200, headers={}, body=b'{"id": "x", "name": "y", "updated_at": "NaN"}')
def test_decode_gives_a_conversation_or_a_dify_error(status, headers, body):
    """Any status, headers and body bytes decode or raise a DifyError, only."""
    result = decode_or_error(status, headers, body)
    if isinstance(result, DifyError):
        error = result
        if 200 <= status < 300:
            assert isinstance(error, APIResponseValidationError)
        else:
            assert isinstance(error, APIStatusError)
            assert error.status_code == status
            if isinstance(error, RateLimitError):
                assert error.retry_after is None or error.retry_after >= 0
        assert isinstance(str(error), str)
        assert isinstance(repr(error), str)
        assert len(error.message) < 2000
    else:
        assert 200 <= status < 300
        assert type(result) is Conversation
        assert result.id == result.id.lower()
        for stamp in (result.created_at, result.updated_at):
            assert stamp is None or stamp.tzinfo == timezone.utc


@given(
    name=st.text(),
    inputs=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    introduction=st.none() | st.text(),
    created_at=st.none() | st.integers(0, 2**33),
    extra=st.dictionaries(st.text(min_size=1, max_size=8), json_values, max_size=3),
)
def test_every_valid_conversation_decodes(
    name, inputs, introduction, created_at, extra
):
    """Every body the contract allows decodes, unknown keys ignored, name kept."""
    body = {
        **extra,
        "id": CID.upper(),
        "name": name,
        "inputs": inputs,
        "status": "normal",
        "introduction": introduction,
        "created_at": created_at,
        "updated_at": created_at,
    }
    conversation = decode_response(200, {}, json.dumps(body).encode())
    assert conversation.id == CID
    assert conversation.name == name
    assert conversation.inputs == inputs
    assert conversation.introduction == introduction
    if created_at is None:
        assert conversation.created_at is None
    else:
        assert conversation.created_at is not None
        assert conversation.created_at.timestamp() == created_at


@given(
    after=st.text(alphabet=" \t\n\r\x0b\x0c\x00\xa0\u2028}x", max_size=4),
    before=st.sampled_from(["", " ", "\n", "\ufeff"]),
)
@example(after="", before="")
@example(after=" \r\n", before="")
@example(after="\x0b", before="")
def test_a_conversation_is_json_exactly_as_json_loads_reads_it(after, before):
    """White space around the body: accepted exactly where json.loads accepts it."""
    document = before + json.dumps({"id": CID, "name": "n"}) + after
    try:
        json.loads(document.encode())
    except ValueError:
        valid = False
    else:
        valid = True
    outcome = decode_or_error(200, {}, document.encode())
    assert isinstance(outcome, Conversation) == valid, outcome


def test_errors_from_a_response_pickle():
    """An error decoded from a response survives pickling (for process pools)."""
    error = decode_or_error(503, {"Retry-After": "1"}, b"busy")
    assert isinstance(error, APIStatusError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.status_code == 503
    assert copy.headers["retry-after"] == "1"
