"""The package's layers, read from its imports (see docs/architecture.md).

- The pure core (requests, answers, models, errors, retry decisions, checks)
  imports no aiohttp, directly or through another module of the package.
- Only the transport touches aiohttp at run time; the client and the
  settings name its types.
- The library never imports its ``testing`` or ``cli`` packages.
- ``cli`` uses the public API only: no private ``dify_async._*`` module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import dify_async

PACKAGE = Path(dify_async.__file__).parent
PURE = ["_sansio", "_models", "_converter", "_exceptions", "_retry", "_validation"]
AIOHTTP_ALLOWED = {
    "dify_async._transport",  # the one that uses it
    "dify_async._client",  # names ClientSession and ClientTimeout in signatures
    "dify_async._settings",  # names ClientTimeout in a field's annotation
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


@cache
def imports(name: str) -> frozenset[str]:
    """Every module *name* imports, as absolute names, at any depth of its code."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def package_imports(name: str) -> set[str]:
    """The package's modules that *name* imports, directly or not."""
    known = modules()
    seen: set[str] = set()
    todo = [name]
    while todo:
        for imported in imports(todo.pop()):
            if imported in known and imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def imports_aiohttp(name: str) -> bool:
    return any(i == "aiohttp" or i.startswith("aiohttp.") for i in imports(name))


def test_the_walk_sees_the_package():
    """The checks below read real modules (a typo would make them vacuous)."""
    names = set(modules())
    assert {f"dify_async.{m}" for m in PURE} <= names
    assert {"dify_async._client", "dify_async._transport", "dify_async.cli"} <= names
    assert imports_aiohttp("dify_async._transport")
    assert "dify_async._transport" in package_imports("dify_async._client")


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_never_imports_aiohttp(module):
    """No pure module imports aiohttp, nor any module of ours that does."""
    name = f"dify_async.{module}"
    offenders = [m for m in [name, *package_imports(name)] if imports_aiohttp(m)]
    assert offenders == []


def test_only_the_transport_touches_aiohttp():
    """aiohttp is used in one module (two more name its types)."""
    library = [
        m
        for m in modules()
        if not m.startswith(("dify_async.testing", "dify_async.cli"))
    ]
    assert {m for m in library if imports_aiohttp(m)} == AIOHTTP_ALLOWED


def test_the_library_never_imports_testing_or_cli():
    """The client and everything it uses stay clear of testing and cli."""
    reached = package_imports("dify_async") | {"dify_async"}
    assert not {
        m for m in reached if m.startswith(("dify_async.testing", "dify_async.cli"))
    }


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_cli_uses_the_public_api_only():
    """cli imports dify_async and dify_async.testing, never a private module."""
    cli = [m for m in modules() if m.startswith("dify_async.cli")]
    assert cli
    private = {
        (module, imported)
        for module in cli
        for imported in imports(module)
        if imported.startswith("dify_async.") and _is_private(imported.split(".")[1])
    }
    assert private == set()
