"""Dify's rules, as the fake server implements them, tested without sockets.

Each class tests one pure function of ``dify_async.testing._rules``; the rows of
the server contract are named in the test names. ``test_fake_server.py`` checks
that the server applies these rules, in Dify's order, over real HTTP.
"""

from __future__ import annotations

import json
import string
import uuid

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dify_async.testing import StoredConversation
from dify_async.testing._rules import (
    DEFAULT_USER,
    MSG_BAD_SCHEME,
    MSG_BAD_TOKEN,
    MSG_EMPTY_JSON,
    MSG_NO_BEARER,
    App,
    AppError,
    RenameArgs,
    app_for_token,
    apply_rename,
    authorization_token,
    canonical_id,
    conversation_body,
    conversation_id_from_path,
    cut_title,
    decode_json,
    lax_bool,
    llm_title,
    method_not_allowed,
    parse_payload,
    require_chat_app,
    require_json_content_type,
    require_object,
    validation_message,
)

NOW = 1_800_000_000
CID = "45701982-8118-4bc5-8e9b-64562b4555f2"
NON_OBJECTS = [[], [{"name": "A"}], "x", "", 42, 0, 1.5, None, True, False]
TRUE_WORDS = ["1", "on", "t", "true", "y", "yes"]
FALSE_WORDS = ["0", "off", "f", "false", "n", "no"]

# Valid Unicode (no lone surrogates: hypothesis leaves them out by default).
names = st.text(min_size=1, max_size=255).filter(str.strip)


def refusal(error: pytest.ExceptionInfo[AppError]) -> tuple[int, str, str]:
    return error.value.status, error.value.code, error.value.message


def stored(**changes: object) -> StoredConversation:
    base = StoredConversation(
        id=CID,
        user="u",
        name="Old",
        inputs={"city": "Lisbon"},
        status="normal",
        introduction="",
        created_at=1_700_000_000,
        updated_at=1_700_000_100,
        messages=("Plan three days in Lisbon", "And a fourth?"),
    )
    return attrs.evolve(base, **changes)


def manual(name: str, user: str = "u") -> RenameArgs:
    return RenameArgs(name=name, auto_generate=False, user=user)


GENERATE = RenameArgs(name=None, auto_generate=True, user="u")


class TestAppError:
    def test_body_is_difys_error_json(self):
        """The body holds exactly code, message and status."""
        error = AppError(404, "not_found", "Conversation Not Exists.")

        assert error.body() == {
            "code": "not_found",
            "message": "Conversation Not Exists.",
            "status": 404,
        }
        assert error.headers == {}

    def test_headers_are_copied(self):
        """The headers given are copied, not shared."""
        given_headers = {"Allow": "POST"}
        error = AppError(405, "method_not_allowed", "no", given_headers)
        given_headers["Allow"] = "GET"

        assert error.headers == {"Allow": "POST"}

    def test_method_not_allowed_names_post(self):
        """Any method but POST on the route is a 405 that allows POST."""
        error = method_not_allowed()

        assert (error.status, error.code) == (405, "method_not_allowed")
        assert error.headers == {"Allow": "POST"}


class TestConversationIdFromPath:
    def test_the_rename_route_gives_the_id(self):
        assert conversation_id_from_path(f"/v1/conversations/{CID}/name") == CID

    def test_an_upper_case_id_is_normalised(self):
        """Werkzeug's UUID converter accepts upper case; Dify uses lower case."""
        path = f"/v1/conversations/{CID.upper()}/name"

        assert conversation_id_from_path(path) == CID

    @pytest.mark.parametrize(
        "path",
        [
            "/v1/conversations/not-a-uuid/name",
            f"/v1/conversations/{CID.replace('-', '')}/name",
            f"/v1/conversations/{{{CID}}}/name",
            f"/conversations/{CID}/name",
            f"/v1/conversations/{CID}/name/",
            f"/v1/conversations/{CID}",
            f"/v1/conversations/{CID[:-1]}g/name",
            "/",
        ],
    )
    def test_anything_else_matches_no_route(self, path):
        """Only 8-4-4-4-12 hex under /v1/conversations/.../name is routed."""
        assert conversation_id_from_path(path) is None

    @given(st.uuids(), st.booleans())
    def test_any_uuid_in_either_case_is_routed(self, value, upper):
        text = str(value).upper() if upper else str(value)

        assert conversation_id_from_path(f"/v1/conversations/{text}/name") == str(value)


class TestCanonicalId:
    @given(st.uuids())
    def test_every_spelling_uuid_accepts_gives_the_lower_case_form(self, value):
        for spelling in (str(value).upper(), value.hex, f"{{{value}}}"):
            assert canonical_id(spelling) == str(value)

    def test_a_non_uuid_is_a_value_error(self):
        with pytest.raises(ValueError, match="badly formed"):
            canonical_id("nope")


class TestAuthorizationToken:
    @pytest.mark.parametrize(
        ("header", "message"),
        [
            (None, MSG_NO_BEARER),
            ("", MSG_NO_BEARER),
            ("Bearer", MSG_NO_BEARER),
            ("Bearer\tapp-x", MSG_NO_BEARER),
            ("Bearer ", MSG_NO_BEARER),
            (" ", MSG_NO_BEARER),
            ("Basic app-x", MSG_BAD_SCHEME),
            ("Token app-x", MSG_BAD_SCHEME),
            ("Bearerapp-x x", MSG_BAD_SCHEME),
        ],
    )
    def test_a_bad_header_is_401(self, header, message):
        """A missing header, one without a space, or another scheme is refused."""
        with pytest.raises(AppError) as caught:
            authorization_token(header)

        assert refusal(caught) == (401, "unauthorized", message)
        assert caught.value.headers == {"WWW-Authenticate": 'Bearer realm="api"'}

    @pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
    def test_the_scheme_is_case_insensitive(self, scheme):
        assert authorization_token(f"{scheme} app-x") == "app-x"

    @given(
        st.text(min_size=1).filter(lambda t: not t[0].isspace()),
        st.sampled_from([" ", "  ", " \t"]),
    )
    def test_the_token_is_everything_after_the_scheme(self, token, gap):
        """The header splits once on white space: the token is kept as sent."""
        assert authorization_token(f"Bearer{gap}{token}") == token


class TestAppForToken:
    APPS = {  # noqa: RUF012
        "app-chat": App(chat=True, api_enabled=True),
        "app-flow": App(chat=False, api_enabled=True),
        "app-off": App(chat=True, api_enabled=False),
    }

    def test_a_known_key_gives_its_app(self):
        assert app_for_token("Bearer app-flow", self.APPS) == App(
            chat=False, api_enabled=True
        )

    def test_an_unknown_key_is_401(self):
        with pytest.raises(AppError) as caught:
            app_for_token("Bearer app-other", self.APPS)

        assert refusal(caught) == (401, "unauthorized", MSG_BAD_TOKEN)
        assert "WWW-Authenticate" in caught.value.headers

    def test_a_bad_header_is_401_before_any_lookup(self):
        with pytest.raises(AppError) as caught:
            app_for_token("Basic app-chat", self.APPS)

        assert refusal(caught) == (401, "unauthorized", MSG_BAD_SCHEME)

    def test_an_app_with_its_api_disabled_is_403(self):
        with pytest.raises(AppError) as caught:
            app_for_token("Bearer app-off", self.APPS)

        assert refusal(caught)[:2] == (403, "forbidden")


class TestRequireJsonContentType:
    @pytest.mark.parametrize(
        "value",
        [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=latin-1",
            "application/merge-patch+json",
            "application/vnd.api+json",
        ],
    )
    def test_json_types_are_accepted(self, value):
        require_json_content_type(value)

    @pytest.mark.parametrize(
        "value",
        ["", "text/plain", "text/json", "application/x-www-form-urlencoded", "json"],
    )
    def test_other_types_are_415(self, value):
        with pytest.raises(AppError) as caught:
            require_json_content_type(value)

        assert refusal(caught)[:2] == (415, "unsupported_media_type")


class TestDecodeJson:
    @pytest.mark.parametrize("raw", [b"", b"not json", b"}"])
    def test_an_empty_or_unreadable_start_is_the_empty_payload_message(self, raw):
        with pytest.raises(AppError) as caught:
            decode_json(raw)

        assert refusal(caught) == (400, "bad_request", MSG_EMPTY_JSON)

    @pytest.mark.parametrize("raw", [b"   ", b'{"name": "A",}', b"\xff\xfe{", b"[1"])
    def test_other_invalid_json_names_the_decoder_error(self, raw):
        with pytest.raises(AppError) as caught:
            decode_json(raw)

        status, code, message = refusal(caught)
        assert (status, code) == (400, "bad_request")
        assert message.startswith("Failed to decode JSON object: ")

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
            max_leaves=10,
        )
    )
    def test_any_json_value_is_decoded(self, value):
        """Any JSON value decodes, objects or not: the next step judges it."""
        assert decode_json(json.dumps(value).encode()) == value

    def test_an_escaped_lone_surrogate_decodes(self):
        """The decoder lets a lone surrogate through; the payload check refuses it."""
        assert decode_json(b'{"name": "\\ud800"}') == {"name": "\ud800"}


class TestRequireObject:
    @pytest.mark.parametrize("payload", NON_OBJECTS)
    def test_a_body_that_is_not_an_object_is_500_unknown(self, payload):
        """Dify reads user from the body before validation, and fails."""
        with pytest.raises(AppError) as caught:
            require_object(payload)

        assert refusal(caught) == (500, "unknown", "Internal Server Error")

    def test_an_object_is_passed_through(self):
        body = {"name": "A"}

        assert require_object(body) is body


class TestRequireChatApp:
    def test_a_chat_app_passes(self):
        require_chat_app(App(chat=True, api_enabled=True))

    def test_another_app_is_not_chat_app(self):
        with pytest.raises(AppError) as caught:
            require_chat_app(App(chat=False, api_enabled=True))

        assert refusal(caught)[:2] == (400, "not_chat_app")


class TestLaxBool:
    @pytest.mark.parametrize(
        "value",
        [True, 1, 1.0, *TRUE_WORDS, *(w.upper() for w in TRUE_WORDS), "True", "yEs"],
    )
    def test_true_values(self, value):
        assert lax_bool(value) is True

    @pytest.mark.parametrize(
        "value",
        [False, 0, 0.0, *FALSE_WORDS, *(w.upper() for w in FALSE_WORDS), "False"],
    )
    def test_false_values(self, value):
        assert lax_bool(value) is False

    @pytest.mark.parametrize(
        "value", [None, 2, -1, 0.5, "", " true", "true ", "maybe", [], {}, [True]]
    )
    def test_anything_else_is_none(self, value):
        assert lax_bool(value) is None

    @given(st.text().filter(lambda t: t.lower() not in {*TRUE_WORDS, *FALSE_WORDS}))
    def test_any_other_string_is_none(self, text):
        assert lax_bool(text) is None

    @given(st.integers().filter(lambda n: n not in {0, 1}))
    def test_any_other_integer_is_none(self, number):
        assert lax_bool(number) is None


class TestParsePayload:
    def test_a_manual_rename(self):
        args = parse_payload({"name": "Trip plans", "user": "u"})

        assert args == RenameArgs(name="Trip plans", auto_generate=False, user="u")

    @pytest.mark.parametrize(
        "body",
        [
            {"user": "u"},
            {"name": None, "user": "u"},
            {"name": "", "user": "u"},
            {"name": "   ", "user": "u"},
            {"name": "\t\n\u3000\u2003", "user": "u"},
            {"name": " ", "auto_generate": "no", "user": "u"},
            {},
        ],
        ids=["missing", "null", "empty", "spaces", "unicode-space", "lax-no", "{}"],
    )
    def test_a_missing_or_blank_name_without_auto_generate_is_invalid(self, body):
        with pytest.raises(AppError) as caught:
            parse_payload(body)

        status, code, message = refusal(caught)
        assert (status, code) == (400, "invalid_param")
        assert message.startswith("1 validation error for ConversationRenamePayload\n")
        assert "Value error, name is required when auto_generate is false" in message
        assert "[type=value_error," in message

    @pytest.mark.parametrize("name", [None, "", "   "])
    def test_auto_generate_needs_no_name(self, name):
        """With auto_generate a missing or blank name is fine (and ignored)."""
        args = parse_payload({"name": name, "auto_generate": True, "user": "u"})

        assert args == RenameArgs(name=name, auto_generate=True, user="u")

    def test_a_name_is_kept_unstripped(self):
        args = parse_payload({"name": "  Trip  ", "user": "u"})

        assert args.name == "  Trip  "

    @pytest.mark.parametrize("name", [123, 1.5, True, ["A"], {"a": 1}])
    def test_a_name_that_is_not_a_string_is_invalid(self, name):
        """Wrong JSON types (name: 123) are refused, with or without auto_generate."""
        for auto_generate in (False, True):
            with pytest.raises(AppError) as caught:
                parse_payload({"name": name, "auto_generate": auto_generate})

            status, code, message = refusal(caught)
            assert (status, code) == (400, "invalid_param")
            assert "name\n  Input should be a valid string [type=string_type" in message

    @pytest.mark.parametrize("flag", [True, 1, "true", "yes", "YES", "on", "1", "t"])
    def test_lax_true_values_turn_auto_generate_on(self, flag):
        args = parse_payload({"name": "X", "auto_generate": flag, "user": "u"})

        assert args.auto_generate is True

    @pytest.mark.parametrize("flag", [False, 0, "false", "no", "off", "0", "f"])
    def test_lax_false_values_keep_a_manual_rename(self, flag):
        args = parse_payload({"name": "X", "auto_generate": flag, "user": "u"})

        assert args.auto_generate is False

    @pytest.mark.parametrize(
        ("flag", "kind"),
        [
            ("maybe", "bool_parsing"),
            (2, "bool_parsing"),
            (0.5, "bool_parsing"),
            (" true", "bool_parsing"),
            (None, "bool_type"),
            ([], "bool_type"),
        ],
    )
    def test_other_auto_generate_values_are_invalid(self, flag, kind):
        with pytest.raises(AppError) as caught:
            parse_payload({"name": "A", "auto_generate": flag})

        assert "auto_generate\n  Input should be a valid boolean" in refusal(caught)[2]
        assert f"[type={kind}," in refusal(caught)[2]

    @pytest.mark.parametrize("payload", NON_OBJECTS)
    def test_a_body_that_is_not_an_object_is_500(self, payload):
        with pytest.raises(AppError) as caught:
            parse_payload(payload)

        assert refusal(caught) == (500, "unknown", "Internal Server Error")

    @pytest.mark.parametrize("auto_generate", [False, True])
    @pytest.mark.parametrize("name", ["\ud800", "Trip \udfff", "\udc00\ud800"])
    def test_a_name_that_is_not_valid_unicode_is_invalid(self, name, auto_generate):
        """A lone surrogate cannot be stored: 400 invalid_param, as pydantic says."""
        with pytest.raises(AppError) as caught:
            parse_payload({"name": name, "auto_generate": auto_generate, "user": "u"})

        status, code, message = refusal(caught)
        assert (status, code) == (400, "invalid_param")
        assert (
            "name\n  Input should be a valid string, unable to parse raw data as a "
            f"unicode string [type=string_unicode, input_value={name!r}," in message
        )

    def test_a_user_that_is_not_valid_unicode_is_looked_up_as_sent(self):
        """Dify reads user before validation: no such end user, a 404 later."""
        args = parse_payload({"name": "A", "user": "\ud800"})

        assert args.user == "\ud800"
        with pytest.raises(AppError) as caught:
            apply_rename(stored(), args, now=NOW)
        assert refusal(caught)[:2] == (404, "not_found")

    def test_a_surrogate_pair_is_valid_unicode(self):
        """Only lone surrogates are refused: a decoded pair is one character."""
        name = json.loads('"\\ud83d\\ude00"')

        assert parse_payload({"name": name, "user": "u"}).name == "\U0001f600"

    def test_unknown_keys_are_ignored(self):
        args = parse_payload(
            {"name": "A", "user": "u", "inputs": {"x": 1}, "conversation_id": "?"}
        )

        assert args == RenameArgs(name="A", auto_generate=False, user="u")

    @pytest.mark.parametrize("user", [None, "", 0, False, [], {}])
    def test_a_missing_or_false_user_is_the_default_user(self, user):
        """Dify falls back to its anonymous end user for any false-ish user."""
        body = {"name": "A"} if user is None else {"name": "A", "user": user}

        assert parse_payload(body).user == DEFAULT_USER

    @pytest.mark.parametrize("user", [42, True, ["u"], {"id": "u"}])
    def test_a_user_that_is_not_a_string_is_invalid(self, user):
        with pytest.raises(AppError) as caught:
            parse_payload({"name": "A", "user": user})

        assert "user\n  Input should be a valid string" in refusal(caught)[2]

    def test_every_type_error_is_listed_in_field_order(self):
        with pytest.raises(AppError) as caught:
            parse_payload({"user": 7, "auto_generate": "x", "name": 1})

        message = refusal(caught)[2]
        assert message.startswith("3 validation errors for ConversationRenamePayload\n")
        assert message.index("\nname\n") < message.index("\nauto_generate\n")
        assert message.index("\nauto_generate\n") < message.index("\nuser\n")

    @given(names, st.text(min_size=1))
    def test_any_non_blank_name_is_kept_exactly(self, name, user):
        assert parse_payload({"name": name, "user": user}) == RenameArgs(
            name=name, auto_generate=False, user=user
        )

    @given(st.text().filter(lambda t: not t.strip()))
    def test_any_blank_name_is_refused(self, name):
        with pytest.raises(AppError) as caught:
            parse_payload({"name": name, "user": "u"})

        assert refusal(caught)[:2] == (400, "invalid_param")


class TestValidationMessage:
    def test_one_field_error(self):
        message = validation_message(
            [("name", "Input should be a valid string", "string_type", 123)]
        )

        assert message == (
            "1 validation error for ConversationRenamePayload\n"
            "name\n"
            "  Input should be a valid string [type=string_type, input_value=123, "
            "input_type=int]\n"
            "    For further information visit "
            "https://errors.pydantic.dev/2.11/v/string_type"
        )

    def test_a_model_error_has_no_location_line(self):
        message = validation_message([(None, "Value error, x", "value_error", {})])

        assert message.splitlines()[1] == (
            "  Value error, x [type=value_error, input_value={}, input_type=dict]"
        )

    def test_several_errors_are_counted_in_the_plural(self):
        errors = [("name", "m", "string_type", 1), ("user", "m", "string_type", 2)]

        assert validation_message(errors).startswith("2 validation errors for ")

    @given(st.text(alphabet=string.ascii_letters, min_size=49))
    def test_a_long_input_is_shown_cut_in_the_middle(self, text):
        """Inputs whose repr is over 50 characters show 25 + ... + 24 of it."""
        message = validation_message([("name", "m", "string_type", text)])

        shown = repr(text)
        assert f"input_value={shown[:25]}...{shown[-24:]}, input_type=str" in message

    @given(st.text(alphabet=string.ascii_letters, max_size=48))
    def test_a_short_input_is_shown_whole(self, text):
        message = validation_message([("name", "m", "string_type", text)])

        assert f"input_value={text!r}, input_type=str" in message


class TestTitles:
    @pytest.mark.parametrize(
        ("message", "title"),
        [("  Weather in Paris \n", "Weather in Paris"), ("", ""), (" \t\n", "")],
    )
    def test_the_stand_in_llm_answers_with_the_stripped_message(self, message, title):
        assert llm_title(message) == title

    def test_a_title_of_75_characters_is_kept(self):
        assert cut_title("x" * 75) == "x" * 75

    def test_a_longer_title_is_cut_to_75_plus_dots(self):
        assert cut_title("y" * 76) == "y" * 75 + "..."

    @given(st.text(max_size=300))
    def test_any_title_length(self, answer):
        title = cut_title(answer)

        if len(answer) <= 75:
            assert title == answer
        else:
            assert title == answer[:75] + "..."
            assert len(title) == 78


class TestApplyRename:
    def test_a_manual_rename_stores_the_name_and_sets_updated_at(self):
        outcome = apply_rename(stored(), manual("Trip plans"), now=NOW)

        assert outcome.stored is True
        assert outcome.llm_called is False
        assert outcome.conversation == stored(
            name="Trip plans", updated_at=NOW, rename_count=1
        )

    def test_the_same_name_again_is_a_rename_too(self):
        once = apply_rename(stored(), manual("A"), now=NOW).conversation
        twice = apply_rename(once, manual("A"), now=NOW + 5)

        assert twice.conversation.rename_count == 2
        assert twice.conversation.updated_at == NOW + 5

    def test_auto_generate_titles_from_the_first_message_only(self):
        """The first message by creation time; updated_at does not move."""
        outcome = apply_rename(stored(), GENERATE, now=NOW)

        assert outcome.stored is True
        assert outcome.llm_called is True
        assert outcome.conversation == stored(
            name="Plan three days in Lisbon", rename_count=1
        )

    def test_auto_generate_ignores_a_name(self):
        args = RenameArgs(name="Ignored", auto_generate=True, user="u")

        assert apply_rename(stored(), args, now=NOW).conversation.name == (
            "Plan three days in Lisbon"
        )

    def test_a_long_generated_title_is_cut(self):
        outcome = apply_rename(stored(messages=("z" * 100,)), GENERATE, now=NOW)

        assert outcome.conversation.name == "z" * 75 + "..."

    def test_an_empty_llm_answer_stores_an_empty_name(self):
        outcome = apply_rename(stored(messages=("   ",)), GENERATE, now=NOW)

        assert outcome.stored is True
        assert outcome.conversation.name == ""

    def test_a_failed_llm_call_keeps_the_name(self):
        """The failure is swallowed: nothing changes, yet the LLM was paid for."""
        before = stored()

        outcome = apply_rename(before, GENERATE, now=NOW, llm_fails=True)

        assert outcome.conversation is before
        assert outcome.stored is False
        assert outcome.llm_called is True

    def test_auto_generate_without_messages_is_invalid_with_an_empty_message(self):
        with pytest.raises(AppError) as caught:
            apply_rename(stored(messages=()), GENERATE, now=NOW)

        assert refusal(caught) == (400, "invalid_param", "")

    @pytest.mark.parametrize("args", [manual("A"), GENERATE])
    def test_an_unknown_conversation_is_404(self, args):
        with pytest.raises(AppError) as caught:
            apply_rename(None, args, now=NOW)

        assert refusal(caught) == (404, "not_found", "Conversation Not Exists.")

    @pytest.mark.parametrize("user", ["other", DEFAULT_USER, "U"])
    def test_another_users_conversation_is_404(self, user):
        with pytest.raises(AppError) as caught:
            apply_rename(stored(), manual("A", user=user), now=NOW)

        assert refusal(caught)[:2] == (404, "not_found")

    def test_a_name_of_255_characters_fits(self):
        outcome = apply_rename(stored(), manual("n" * 255), now=NOW)

        assert outcome.conversation.name == "n" * 255

    def test_a_longer_name_fails_in_the_database(self):
        """Dify does not validate the length: the column refuses it, a 500."""
        with pytest.raises(AppError) as caught:
            apply_rename(stored(), manual("n" * 256), now=NOW)

        assert refusal(caught) == (500, "unknown", "Internal Server Error")

    @given(names, st.integers(min_value=0, max_value=2**40))
    def test_any_name_is_stored_exactly_as_sent(self, name, now):
        outcome = apply_rename(stored(), manual(name), now=now)

        assert outcome.conversation.name == name
        assert outcome.conversation.updated_at == now

    @given(st.text(max_size=200), st.lists(st.text(max_size=20), max_size=3))
    def test_any_first_message_gives_its_cut_title(self, first, rest):
        outcome = apply_rename(stored(messages=(first, *rest)), GENERATE, now=NOW)

        assert outcome.conversation.name == cut_title(first.strip())
        assert outcome.conversation.updated_at == stored().updated_at


class TestConversationBody:
    def test_the_seven_fields(self):
        conversation = stored(introduction=None, status="archived", updated_at=None)

        assert conversation_body(conversation) == {
            "id": CID,
            "name": "Old",
            "inputs": {"city": "Lisbon"},
            "status": "archived",
            "introduction": None,
            "created_at": 1_700_000_000,
            "updated_at": None,
        }

    @given(st.uuids(), names)
    def test_the_body_is_json(self, value, name):
        body = conversation_body(stored(id=str(value), name=name))

        assert json.loads(json.dumps(body)) == body
        assert uuid.UUID(body["id"]) == value
