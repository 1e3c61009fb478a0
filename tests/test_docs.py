"""The code in the documentation and the README runs, against the fake server.

Every ``python`` (and ``pycon``) fenced block of ``docs/**/*.md`` and
``README.md`` is run by Sybil, in order, one namespace per page:

- A block that starts with ``>>>`` is a doctest: its output is checked.
- A block that defines a ``test_...`` function is a test module: it is written
  to a temporary directory and run by pytest in a subprocess, as a user's test
  suite would run it (the ``dify_server`` fixture comes from the installed
  plugin; pytest-asyncio runs in its default strict mode).
- Any other block is run as a script; top-level ``await`` is allowed, and each
  page has one event loop for all of its blocks.

Each page runs with a :class:`~dify_async.testing.FakeDifyServer` behind
``DIFY_API_KEY`` and ``DIFY_BASE_URL``, retry waits made instant, and its
working directory in a temporary folder. The server holds the sample
conversation ``45701982-8118-4bc5-8e9b-64562b4555f2`` of ``user-42`` (one
message, so ``auto_generate`` works), and is in the namespace as
``dify_server`` for hidden set-up blocks::

    <!-- invisible-code-block: python
    dify_server.inject_fault(Fault.gateway(502))
    -->

A block not meant to run is preceded by ``<!-- skip: next -->``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import os
import re
import subprocess
import symtable
import sys
import textwrap
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import pad
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.abstract.lexers import LexerCollection
from sybil.parsers.markdown import SkipParser
from sybil.parsers.markdown.lexers import (
    DirectiveInHTMLCommentLexer,
    FencedCodeBlockLexer,
)

from dify_async.testing import FakeDifyServer, Fault, instant_retries

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(
    [
        *(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts),
        ROOT / "README.md",
    ]
)

SAMPLE_ID = "45701982-8118-4bc5-8e9b-64562b4555f2"
SAMPLE_USER = "user-42"

_LOOP = "__docs_event_loop__"
_TMP = "__docs_tmp_path__"
_TEST_FUNCTION = re.compile(r"^(async )?def test_", re.MULTILINE)
_PYTHON_FENCE = re.compile(r"^[ \t]*```[ \t]*(python|pycon)[ \t]*$", re.MULTILINE)
# Python under another name, or in a MyST code directive: Sybil would skip it.
_OTHER_PYTHON_FENCE = re.compile(
    r"^[ \t]*```[ \t]*(\{(code|code-block|sourcecode)\}[ \t]+)?"
    r"(py|py3|python3|ipython|python|pycon)[ \t]*$",
    re.MULTILINE,
)
_PYTEST_INI = """\
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""


def _run_script(example: Example) -> None:
    """Run a block as a script, awaiting it in the page's loop if it awaits."""
    source = pad(example.parsed, example.line + example.parsed.line_offset)
    code = compile(
        source,
        example.path,
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    result = eval(code, example.namespace)  # noqa: S307  (our own documentation)
    if code.co_flags & inspect.CO_COROUTINE:
        example.namespace[_LOOP].run_until_complete(result)
    example.namespace.pop("__builtins__", None)


def _run_test_module(example: Example) -> None:
    """Run a block as a test module, with pytest, in a fresh directory."""
    folder: Path = example.namespace[_TMP] / f"line_{example.line}"
    folder.mkdir()
    (folder / "pytest.ini").write_text(_PYTEST_INI)
    module = folder / f"test_docs_line_{example.line}.py"
    module.write_text(str(example.parsed))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DIFY_API_KEY", "DIFY_BASE_URL", "PYTEST_ADDOPTS"}
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module.name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    expected = len(_TEST_FUNCTION.findall(str(example.parsed)))
    passed = re.search(r"(\d+) passed", result.stdout)
    if result.returncode != 0 or passed is None or int(passed[1]) != expected:
        raise AssertionError(
            f"{example.path}, line {example.line}: the test module failed:\n"
            f"{result.stdout}\n{result.stderr}"
        )


class _PythonBlocks:
    """Finds the runnable blocks of a Markdown page (see the module docstring)."""

    def __init__(self) -> None:
        self.lexers = LexerCollection(
            [
                FencedCodeBlockLexer(
                    language=r"python|pycon",
                    mapping={"language": "language", "source": "source"},
                ),
                DirectiveInHTMLCommentLexer(
                    directive=r"invisible-code-block",
                    arguments=r"python",
                    mapping={"arguments": "language", "source": "source"},
                ),
            ]
        )
        self.doctests = DocTestStringParser(
            DocTestEvaluator(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE)
        )

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexers(document):
            source = region.lexemes["source"]
            if source.startswith(">>>"):
                for doctest in self.doctests(source, document.path):
                    doctest.adjust(region, source)
                    yield doctest
                continue
            region.parsed = source
            if _TEST_FUNCTION.search(source):
                region.evaluator = _run_test_module
            else:
                region.evaluator = _run_script
            yield region


SYBIL = Sybil(parsers=[_PythonBlocks(), SkipParser()])


@contextmanager
def _logging_restored() -> Iterator[None]:
    """Undo what a page does to logging (handlers, levels)."""
    saved = []
    for name in (None, "dify_async"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, list(logger.handlers), logger.propagate))
    try:
        yield
    finally:
        for logger, level, handlers, propagate in saved:
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@contextmanager
def _event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        pending = asyncio.all_tasks(loop)
        if pending:
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture
def page_namespace(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """What every page's code runs with (see the module docstring)."""
    with FakeDifyServer() as server, _event_loop() as loop:
        server.add_conversation(
            user=SAMPLE_USER,
            conversation_id=SAMPLE_ID,
            name="New conversation",
            inputs={"city": "Lisbon"},
            messages=["Can you plan three days in Lisbon for me?"],
        )
        monkeypatch.setenv("DIFY_API_KEY", server.api_key)
        monkeypatch.setenv("DIFY_BASE_URL", server.base_url)
        monkeypatch.chdir(tmp_path)
        with instant_retries(), _logging_restored():
            yield {
                "__name__": "__main__",
                "dify_server": server,
                "Fault": Fault,
                _LOOP: loop,
                _TMP: tmp_path,
            }


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_code_blocks_run(path: Path, page_namespace: dict[str, Any]) -> None:
    """Every runnable block of the page runs, in order, and doctests match."""
    document = SYBIL.parse(path)
    document.namespace.update(page_namespace)
    examples = list(document)
    fences = len(_PYTHON_FENCE.findall(document.text))
    assert len(examples) >= fences, "a python block was not picked up"
    for example in examples:
        example.evaluate()


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_python_blocks_are_plain_fences(path: Path) -> None:
    """Python code is fenced as ```python or ```pycon, so that it is tested."""
    text = path.read_text(encoding="utf-8")
    offenders = [
        m.group(0).strip()
        for m in _OTHER_PYTHON_FENCE.finditer(text)
        if not _PYTHON_FENCE.fullmatch(m.group(0))
    ]
    assert not offenders, f"untested code fences in {path.name}: {offenders}"


_HIDDEN_BLOCK = re.compile(
    r"<!--[ \t]*invisible-code-block:[ \t]*python[ \t]*\n(.*?)-->", re.DOTALL
)
_VISIBLE_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
# What the harness puts in every page's namespace for hidden blocks to use.
_HARNESS_NAMES = frozenset({"dify_server", "Fault"})


def _module_names(source: str) -> tuple[set[str], set[str]]:
    """The names a block binds at module level, and the globals it reads."""
    table = symtable.symtable(source, "<block>", "exec")
    bound = {
        symbol.get_name()
        for symbol in table.get_symbols()
        if symbol.is_assigned() or symbol.is_imported()
    }
    read: set[str] = set()
    scopes = [table]
    while scopes:
        scope = scopes.pop()
        scopes.extend(scope.get_children())
        read.update(
            symbol.get_name()
            for symbol in scope.get_symbols()
            if symbol.is_referenced() and symbol.is_global()
        )
    return bound, read


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_visible_code_does_not_rely_on_hidden_set_up(path: Path) -> None:
    """What a reader copies defines what it uses: no name from a hidden block.

    Hidden blocks may seed the fake server, inject faults and check results;
    the ids, data and helpers that the visible code uses are visible too.
    """
    text = path.read_text(encoding="utf-8")
    hidden = set(_HARNESS_NAMES)
    for block in _HIDDEN_BLOCK.findall(text):
        hidden |= _module_names(block)[0]
    bound: set[str] = set()
    read: set[str] = set()
    for block in _VISIBLE_BLOCK.findall(text):
        block_bound, block_read = _module_names(block)
        bound |= block_bound
        read |= block_read
    leaks = sorted((read - bound) & hidden)
    assert not leaks, f"{path.name}: visible code uses {leaks}, set up in hidden blocks"


def test_the_harness_check_catches_hidden_set_up(tmp_path: Path) -> None:
    """The check above fails for a visible block that uses a hidden name."""
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- invisible-code-block: python\n"
        'ticket_ids = [dify_server.add_conversation(user="u")]\n'
        "-->\n\n"
        "```python\nprint(ticket_ids)\n```\n"
    )
    with pytest.raises(AssertionError, match=r"uses \['ticket_ids'\]"):
        test_visible_code_does_not_rely_on_hidden_set_up(page)


def test_the_api_page_lists_every_public_name() -> None:
    """Every name dify_async and dify_async.testing export has its entry."""
    import dify_async  # noqa: PLC0415  (only this test needs the lists)
    import dify_async.testing  # noqa: PLC0415

    api = (DOCS / "api.md").read_text(encoding="utf-8")
    public = [
        *(f"dify_async.{name}" for name in dify_async.__all__ if name != "__version__"),
        *(f"dify_async.testing.{name}" for name in dify_async.testing.__all__),
    ]
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)$", api, re.MULTILINE))
    missing = [name for name in public if name not in documented]
    assert not missing, f"not in docs/api.md: {missing}"
    assert "{py:data} __version__" in api


def test_the_pages_have_code_to_run() -> None:
    """The entry pages hold runnable code, so the tests above test something."""
    for name in ("README.md", "docs/index.md", "docs/quickstart.md"):
        document = SYBIL.parse(ROOT / name)
        assert any(True for _ in document), f"no runnable code in {name}"


def test_a_failing_block_fails(page_namespace: dict[str, Any], tmp_path: Path) -> None:
    """The harness reports a block that raises, and a doctest that differs."""
    page = tmp_path / "broken.md"
    page.write_text(
        textwrap.dedent(
            """\
            ```python
            from dify_async import AsyncDifyClient

            async with AsyncDifyClient() as client:
                await client.rename_conversation(
                    "45701982-8118-4bc5-8e9b-64562b4555f2", name="x", user="nobody"
                )
            ```

            ```pycon
            >>> 1 + 1
            3
            ```

            ```python
            def test_the_fixture_is_there(dify_server):
                assert dify_server.conversations == ["not", "empty"]
            ```
            """
        )
    )
    document = SYBIL.parse(page)
    document.namespace.update(page_namespace)
    script, doctest, test_module = list(document)
    with pytest.raises(Exception, match="not_found"):
        script.evaluate()
    with pytest.raises(AssertionError, match="Expected"):
        doctest.evaluate()
    with pytest.raises(AssertionError, match="1 failed"):
        test_module.evaluate()
