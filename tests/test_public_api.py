"""The public names are the documented ones, and each is documented."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

import dify_async
import dify_async.testing
from dify_async import DifyError

ROOT = Path(__file__).resolve().parents[1]
API_PAGE = ROOT / "docs" / "api.md"

PUBLIC = [
    "APIConnectionError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncDifyClient",
    "AuthenticationError",
    "BadRequestError",
    "CertificateVerificationError",
    "ClientClosedError",
    "Conversation",
    "DifyError",
    "EventLoopError",
    "InternalServerError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RenameRequest",
    "RequestTooLargeError",
    "RetryEvent",
    "UnsupportedMediaTypeError",
    "__version__",
]
PUBLIC_TESTING = [
    "FakeDifyServer",
    "Fault",
    "StoredConversation",
    "instant_retries",
    "set_instant_retries",
]

_AUTODOC = re.compile(
    r"^\.\. auto(?:class|exception|function):: ([\w.]+)$", re.MULTILINE
)
_DATA = re.compile(r"^```\{py:data\} (\w+)\n:module: ([\w.]+)$", re.MULTILINE)


def _documented(module: str) -> set[str]:
    """The names the API reference documents directly in *module*."""
    text = API_PAGE.read_text(encoding="utf-8")
    names = {
        full.rpartition(".")[2]
        for full in _AUTODOC.findall(text)
        if full.rpartition(".")[0] == module
    }
    names |= {name for name, where in _DATA.findall(text) if where == module}
    return names


def test_the_public_names() -> None:
    """Adding or removing a public name is a deliberate act."""
    assert dify_async.__all__ == PUBLIC
    assert dify_async.testing.__all__ == PUBLIC_TESTING


@pytest.mark.parametrize("module", [dify_async, dify_async.testing])
def test_all_is_sorted_and_importable(module: ModuleType) -> None:
    assert module.__all__ == sorted(module.__all__)
    namespace: dict[str, object] = {}
    exec(f"from {module.__name__} import *", namespace)  # noqa: S102
    namespace.pop("__builtins__")
    assert sorted(namespace) == sorted(module.__all__)


def test_the_api_reference_documents_exactly_the_public_names() -> None:
    assert _documented("dify_async") == set(dify_async.__all__)
    assert _documented("dify_async.testing") == set(dify_async.testing.__all__)


def test_the_fixture_is_documented() -> None:
    assert _documented("dify_async.testing.pytest_plugin") == {"dify_server"}


def _public_members(obj: type) -> list[tuple[str, object]]:
    return [
        (name, member)
        for name, member in vars(obj).items()
        if not name.startswith("_")
        and (inspect.isfunction(member) or isinstance(member, property | classmethod))
    ]


@pytest.mark.parametrize(
    ("module", "name"),
    [(dify_async, n) for n in PUBLIC if n != "__version__"]
    + [(dify_async.testing, n) for n in PUBLIC_TESTING],
)
def test_every_public_name_has_a_docstring(module: ModuleType, name: str) -> None:
    obj = getattr(module, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        for member_name, member in _public_members(obj):
            assert inspect.getdoc(member), f"{name}.{member_name} has no docstring"


def test_version_comes_from_the_package_metadata() -> None:
    assert dify_async.__version__ == importlib.metadata.version("dify-async")
    assert re.fullmatch(
        r"\d+\.\d+\.\d+(\.?(a|b|rc|dev|post)\d+)*", dify_async.__version__
    )


def test_the_version_is_written_once() -> None:
    """The build reads the version from dify_async/_version.py."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.MULTILINE)
    assert '[tool.hatch.version]\npath = "dify_async/_version.py"' in pyproject
    assert not re.search(r"^version = ", pyproject, re.MULTILINE)
    source = (ROOT / "dify_async" / "_version.py").read_text(encoding="utf-8")
    assert f'__version__ = "{dify_async.__version__}"' in source


def _tree(text: str) -> dict[str, str]:
    """Parent of each class in a documented exception tree."""
    block = text[text.index("```text\nDifyError") :]
    block = block[len("```text\n") : block.index("```", 3)]
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        match = re.match(r"^([│├└─ ]*)(\w+)", line)
        assert match is not None, line
        depth, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


@pytest.mark.parametrize("page", ["api.md", "errors.md"])
def test_the_documented_exception_tree_is_the_real_one(page: str) -> None:
    parents = _tree((ROOT / "docs" / page).read_text(encoding="utf-8"))
    errors = {
        name
        for name in dify_async.__all__
        if inspect.isclass(obj := getattr(dify_async, name))
        and issubclass(obj, BaseException)
    }
    assert set(parents) | {"DifyError"} == errors
    for name, parent in parents.items():
        cls = getattr(dify_async, name)
        assert issubclass(cls, getattr(dify_async, parent)), (name, parent)
        # The nearest documented ancestor is the documented parent.
        documented_bases = [
            base.__name__
            for base in cls.__mro__[1:]
            if base.__name__ in errors and issubclass(base, DifyError)
        ]
        assert documented_bases[0] == parent, (name, documented_bases)
