"""Models, validation before sending, and the converter."""

from __future__ import annotations

import pickle
import uuid
from datetime import datetime, timezone

import attrs
import cattrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dify_async import (
    APIConnectionError,
    Conversation,
    InvalidRequestError,
    NotFoundError,
    RenameRequest,
)
from dify_async._converter import converter, make_converter

CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
SUCCESS = {
    "id": CID,
    "name": "iPhone Specs Chat",
    "inputs": {"city": "San Francisco"},
    "status": "normal",
    "introduction": "Welcome! How can I help you today?",
    "created_at": 1705407629,
    "updated_at": 1705411229,
}
strict = make_converter(forbid_extra_keys=True)


class TestRenameRequest:
    @given(st.uuids())
    def test_any_uuid_spelling_is_normalised(self, value):
        """Every spelling uuid.UUID accepts becomes canonical lower case."""
        canonical = str(value)
        for spelling in (
            value,
            canonical,
            canonical.upper(),
            value.hex,
            f"{{{canonical}}}",
            f"urn:uuid:{canonical}",
        ):
            request = RenameRequest(spelling, "u", "n")
            assert request.conversation_id == canonical

    @pytest.mark.parametrize(
        "bad", ["", "not-a-uuid", CID + "0", CID[:-1], "../../v1/apps", " " + CID]
    )
    def test_non_uuid_ids_are_refused(self, bad):
        """A conversation id that is not a UUID is refused, naming the field."""
        with pytest.raises(InvalidRequestError, match="conversation_id"):
            RenameRequest(bad, "u", "n")

    def test_non_string_id_is_refused(self):
        """An id of another type is refused, naming the type."""
        with pytest.raises(InvalidRequestError, match=r"conversation_id.*int"):
            RenameRequest(5, "u", "n")  # type: ignore[arg-type]

    def test_long_bad_id_is_shortened_in_the_message(self):
        """A huge bad id does not flood the error message."""
        with pytest.raises(InvalidRequestError) as info:
            RenameRequest("x" * 10_000, "u", "n")
        assert len(str(info.value)) < 200

    @pytest.mark.parametrize("name", ["", " ", "\t\n", "\u3000"])
    def test_blank_names_are_refused(self, name):
        """Empty or white-space names are refused, as the server would."""
        with pytest.raises(InvalidRequestError, match="name"):
            RenameRequest(CID, "u", name)

    def test_missing_name_without_auto_generate_is_refused(self):
        """A rename needs a name unless the server generates it."""
        with pytest.raises(InvalidRequestError, match="auto_generate"):
            RenameRequest(CID, "u")

    def test_name_of_255_characters_is_accepted_256_refused(self):
        """Dify stores at most 255 characters; longer is refused before sending."""
        assert RenameRequest(CID, "u", "é" * 255).name == "é" * 255
        with pytest.raises(InvalidRequestError, match="256 characters"):
            RenameRequest(CID, "u", "é" * 256)

    def test_name_of_another_type_is_refused(self):
        """A name must be a string."""
        with pytest.raises(InvalidRequestError, match="name must be a str"):
            RenameRequest(CID, "u", 123)  # type: ignore[arg-type]

    def test_lone_surrogates_are_refused(self):
        """A name that is not valid Unicode is refused."""
        with pytest.raises(InvalidRequestError, match="Unicode"):
            RenameRequest(CID, "u", "bad \ud800")

    @given(st.text(min_size=1, max_size=255).filter(str.strip))
    def test_any_non_blank_name_up_to_255_is_kept_exactly(self, name):
        """Valid names are kept exactly, white space included."""
        assert RenameRequest(CID, "u", name).name == name

    def test_auto_generate_needs_no_name(self):
        """auto_generate works without a name."""
        request = RenameRequest(CID, "u", auto_generate=True)
        assert request.name is None
        assert request.auto_generate is True

    def test_auto_generate_must_be_a_real_bool(self):
        """A string or number for auto_generate is refused."""
        with pytest.raises(InvalidRequestError, match="auto_generate must be a bool"):
            RenameRequest(CID, "u", auto_generate="true")  # type: ignore[arg-type]

    @pytest.mark.parametrize("user", ["", "   "])
    def test_blank_user_is_refused(self, user):
        """A blank user would address DEFAULT-USER's conversations: refused."""
        with pytest.raises(InvalidRequestError, match="DEFAULT-USER"):
            RenameRequest(CID, user, "n")

    @pytest.mark.parametrize("user", ["a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x85b"])
    def test_user_with_control_characters_is_refused(self, user):
        """Control characters in user are refused."""
        with pytest.raises(InvalidRequestError, match="control"):
            RenameRequest(CID, user, "n")

    def test_user_of_another_type_is_refused(self):
        """A user must be a string."""
        with pytest.raises(InvalidRequestError, match="user must be a str"):
            RenameRequest(CID, 42, "n")  # type: ignore[arg-type]

    def test_is_frozen(self):
        """A request cannot be changed after validation."""
        request = RenameRequest(CID, "u", "n")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            request.name = ""  # type: ignore[misc]

    def test_invalid_request_error_is_a_value_error(self):
        """Code that catches ValueError for bad input keeps working."""
        with pytest.raises(ValueError, match="name"):
            RenameRequest(CID, "u", "")


class TestConverter:
    def test_strict_converter_decodes_the_contract_example(self):
        """The documented response has exactly the fields the model knows."""
        conversation = strict.structure(SUCCESS, Conversation)
        assert conversation.name == "iPhone Specs Chat"

    def test_strict_converter_notices_new_fields(self):
        """A strict decode catches schema drift the tolerant one ignores."""
        with pytest.raises(cattrs.BaseValidationError):
            strict.structure({**SUCCESS, "new_field": 1}, Conversation)
        assert converter.structure({**SUCCESS, "new_field": 1}, Conversation)

    @given(
        st.one_of(st.none(), st.integers(min_value=0, max_value=2**32)),
    )
    def test_timestamps_round_trip_as_aware_utc(self, seconds):
        """Unix seconds become aware UTC datetimes and back."""
        conversation = converter.structure(
            {**SUCCESS, "created_at": seconds}, Conversation
        )
        if seconds is None:
            assert conversation.created_at is None
        else:
            assert conversation.created_at == datetime.fromtimestamp(
                seconds, timezone.utc
            )
            assert converter.unstructure(conversation)["created_at"] == seconds

    def test_conversation_unstructures_to_the_wire_shape(self):
        """A Conversation converts back to the server's JSON shape."""
        conversation = converter.structure(SUCCESS, Conversation)
        assert converter.unstructure(conversation) == SUCCESS

    def test_request_id_stays_out_of_the_body(self):
        """The conversation id goes in the path, never in the body."""
        body = converter.unstructure(RenameRequest(uuid.UUID(CID), "u", "n"))
        assert body == {"user": "u", "auto_generate": False, "name": "n"}


class TestErrorsPickle:
    def test_status_errors_survive_pickling(self):
        """Errors can cross process boundaries (multiprocessing, task queues)."""
        error = NotFoundError(
            "Conversation Not Exists.",
            status_code=404,
            code="not_found",
            headers={"X-Version": "1.9.2"},
            body={"code": "not_found"},
            method="POST",
            url="https://h/v1/x",
            attempts=1,
        )
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is NotFoundError
        assert str(copy) == str(error)
        assert copy.code == "not_found"
        assert copy.server_version == "1.9.2"

    def test_connection_errors_survive_pickling(self):
        """A connection error keeps request_sent and attempts through pickle."""
        error = APIConnectionError("refused", request_sent=False, attempts=3)
        copy = pickle.loads(pickle.dumps(error))
        assert copy.request_sent is False
        assert copy.attempts == 3
