"""The cattrs converter between the models and Dify's JSON.

One converter is built at import time and its hooks are generated once; every
call reuses them. The structure hooks are strict about JSON types (a number is
not silently turned into a name) and tolerant of keys they do not know, since
Dify adds response fields over time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Final, cast

import cattrs
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import Conversation, RenameRequest

__all__ = [
    "converter",
    "make_converter",
    "structure_conversation",
    "structure_conversation_quickly",
    "unstructure_request",
]


def _structure_str(value: object, _: type) -> str:
    if type(value) is str:
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _structure_bool(value: object, _: type) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(f"expected a boolean, got {type(value).__name__}")


def _structure_object(value: object, _: type) -> dict[str, Any]:
    if type(value) is dict:
        return value
    raise TypeError(f"expected a JSON object, got {type(value).__name__}")


_from_timestamp: Final = datetime.fromtimestamp
_UTC: Final = timezone.utc


def _structure_timestamp(value: object, _: type) -> datetime:
    if value is None:
        raise TypeError("expected unix seconds, got NoneType")
    return cast("datetime", _structure_optional_timestamp(value, datetime))


# The optional fields get hooks of their own, so that the generated code calls
# one function per field, instead of cattrs' generic optional hook, which
# dispatches on the inner type at every call.


def _structure_optional_str(value: object, _: type) -> str | None:
    if value is None or type(value) is str:
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _structure_optional_timestamp(value: object, _: type) -> datetime | None:
    # Unix seconds (UTC). bool is an int subclass, and never a timestamp.
    if value is None:
        return None
    if type(value) is int or type(value) is float:
        try:
            return _from_timestamp(value, _UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"timestamp {value!r} is out of range") from exc
    raise TypeError(f"expected unix seconds, got {type(value).__name__}")


def _unstructure_timestamp(value: datetime) -> int:
    return int(value.timestamp())


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """Build a converter for the models.

    Args:
        forbid_extra_keys: Refuse response keys the models do not know. The
            library tolerates them; tests use a strict converter to notice
            when the server's schema drifts.
    """
    return _build(forbid_extra_keys=forbid_extra_keys)[0]


def _build(
    *, forbid_extra_keys: bool
) -> tuple[
    cattrs.Converter,
    Callable[[Mapping[str, Any], Any], Conversation],
    Callable[[Mapping[str, Any], Any], Conversation],
    Callable[[RenameRequest], dict[str, Any]],
]:
    """Build a converter, and return it with its generated model hooks.

    The hooks are the converter's for :class:`Conversation` and
    :class:`RenameRequest`, and a second hook for :class:`Conversation`,
    generated without detailed validation: quicker, but its errors do not
    say which field is wrong.
    """
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_func(
        lambda cl: cl == dict[str, Any], _structure_object
    )
    conv.register_structure_hook(datetime, _structure_timestamp)
    conv.register_structure_hook_func(
        lambda cl: cl == str | None, _structure_optional_str
    )
    conv.register_structure_hook_func(
        lambda cl: cl == datetime | None, _structure_optional_timestamp
    )
    conv.register_unstructure_hook(datetime, _unstructure_timestamp)
    # A name is sent as it is: with this hook, the generated code reads the
    # attribute directly instead of dispatching on its type.
    conv.register_unstructure_hook_func(lambda cl: cl == str | None, identity)
    structure = make_dict_structure_fn(
        Conversation, conv, _cattrs_forbid_extra_keys=forbid_extra_keys
    )
    conv.register_structure_hook(Conversation, structure)
    quick = make_dict_structure_fn(
        Conversation,
        conv,
        _cattrs_forbid_extra_keys=forbid_extra_keys,
        _cattrs_detailed_validation=False,
    )
    # The body of POST /conversations/{id}/name: the id goes in the path, and
    # a missing name (auto_generate) is left out rather than sent as null.
    unstructure = make_dict_unstructure_fn(
        RenameRequest,
        conv,
        conversation_id=override(omit=True),
        name=override(omit_if_default=True),
    )
    conv.register_unstructure_hook(RenameRequest, unstructure)
    return conv, structure, quick, unstructure


_BUILT = _build(forbid_extra_keys=False)

converter: Final = _BUILT[0]
"""The converter the client uses."""

structure_conversation: Final = _BUILT[1]
"""The converter's generated hook for :class:`Conversation`, which
``converter.structure(data, Conversation)`` dispatches to; the client calls it
directly."""

structure_conversation_quickly: Final = _BUILT[2]
"""The same, generated without detailed validation: it accepts and refuses
exactly what :data:`structure_conversation` does, quicker, but its errors do
not name the field. The client tries it first, and on an error runs
:data:`structure_conversation` for the full report."""

unstructure_request: Final = _BUILT[3]
"""The converter's generated hook for :class:`RenameRequest`, which
``converter.unstructure(request)`` dispatches to; the client calls it
directly."""
