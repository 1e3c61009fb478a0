"""The cattrs converter between the models and Dify's JSON.

One converter is built at import time and its hooks are generated once; every
call reuses them. The structure hooks are strict about JSON types (a number is
not silently turned into a name) and tolerant of keys they do not know, since
Dify adds response fields over time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from ._models import Conversation, RenameRequest

__all__ = ["converter", "make_converter"]


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


def _structure_timestamp(value: object, _: type) -> datetime:
    # Unix seconds (UTC). bool is an int subclass, and never a timestamp.
    if type(value) is int or type(value) is float:
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
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
    conv = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook_func(
        lambda cl: cl == dict[str, Any], _structure_object
    )
    conv.register_structure_hook(datetime, _structure_timestamp)
    conv.register_unstructure_hook(datetime, _unstructure_timestamp)
    conv.register_structure_hook(
        Conversation,
        make_dict_structure_fn(
            Conversation, conv, _cattrs_forbid_extra_keys=forbid_extra_keys
        ),
    )
    # The body of POST /conversations/{id}/name: the id goes in the path, and
    # a missing name (auto_generate) is left out rather than sent as null.
    conv.register_unstructure_hook(
        RenameRequest,
        make_dict_unstructure_fn(
            RenameRequest,
            conv,
            conversation_id=override(omit=True),
            name=override(omit_if_default=True),
        ),
    )
    return conv


converter = make_converter()
"""The converter the client uses."""
