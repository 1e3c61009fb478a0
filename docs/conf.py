"""Sphinx configuration for the dify_async documentation."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version as _installed_version
from typing import TYPE_CHECKING, Any, cast

import attrs
from docutils import nodes
from sphinx.ext import intersphinx
from sphinx.util.inspect import stringify_signature
from sphinx.util.nodes import make_refnode

if TYPE_CHECKING:
    from docutils.nodes import Element, TextElement
    from sphinx.application import Sphinx
    from sphinx.domains.std import StandardDomain
    from sphinx.environment import BuildEnvironment

project = "dify_async"
author = "dify_async contributors"
copyright = "dify_async contributors"
release = _installed_version("dify-async")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inv", "Thumbs.db", ".DS_Store"]

# -- MyST ---------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc and napoleon -----------------------------------------------------

autodoc_member_order = "bysource"
# Show defaults as they are written (``timeout=DEFAULT_TIMEOUT``), not as the
# repr of their value; the docstrings say what each default means.
autodoc_preserve_defaults = True
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- references -----------------------------------------------------------------

# Every reference must resolve (the build runs with -n). Links to Python's and
# aiohttp's documentation go through intersphinx, but the build has no network
# access: the inventories are files in the repository, listing the names these
# pages use (docs/_inv/make_inventories.py writes them; add a name there when
# the build reports one missing). The links in the built pages point to the
# real sites.
nitpicky = True
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inv/python.inv"),
    "aiohttp": ("https://docs.aiohttp.org/en/stable", "_inv/aiohttp.inv"),
}


# Private names that signatures and docstrings show: each links to the
# paragraph of the API page that explains it.
_EXPLAINED_ON_THE_API_PAGE = {
    "DEFAULT_TIMEOUT": "api-defaults",
    "DEFAULT_MAX_RESPONSE_SIZE": "api-defaults",
    "dify_async._settings.Unset": "api-defaults",
}


def _resolve_more(
    app: Sphinx, env: BuildEnvironment, node: Element, contnode: TextElement
) -> Element | None:
    """Resolve the references that neither Sphinx nor intersphinx can.

    - ``aiohttp.client.ClientTimeout`` is ``aiohttp.ClientTimeout``: type
      hints name aiohttp's classes by the module that defines them, and
      aiohttp documents them under the package, where users import them from.
    - The private names above link to their explanation.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.startswith("aiohttp.client."):
        node["reftarget"] = "aiohttp." + target.removeprefix("aiohttp.client.")
        return intersphinx.missing_reference(app, env, node, contnode)
    label = _EXPLAINED_ON_THE_API_PAGE.get(target)
    if label is None:
        return None
    std = cast("StandardDomain", env.get_domain("std"))
    docname, anchor = std.anonlabels[label]
    return make_refnode(
        app.builder, node["refdoc"], docname, anchor, contnode, "Defaults"
    )


class _Shown:
    """A default value that shows as the given text in a signature."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _attrs_signature(
    _app: Sphinx,
    what: str,
    _name: str,
    obj: Any,  # noqa: ANN401  (whatever autodoc documents)
    _options: object,
    _signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    """Show an attrs class's defaults as values.

    With ``autodoc_preserve_defaults``, the ``__init__`` that attrs generates
    would show its own source (``attr_dict['status'].default``). Show the
    values instead, and ``dict()`` for a default made by ``Factory(dict)``.
    """
    if what not in {"class", "exception"} or not attrs.has(obj):
        return None
    defaults = {
        field.alias: field.default
        for field in attrs.fields(obj)
        if field.init and field.default is not attrs.NOTHING
    }
    parameters = []
    for parameter in inspect.signature(obj).parameters.values():
        if parameter.name in defaults:
            default = defaults[parameter.name]
            if isinstance(default, attrs.Factory):
                default = _Shown(f"{default.factory.__name__}()")
            parameter = parameter.replace(default=default)  # noqa: PLW2901
        parameters.append(parameter)
    shown = inspect.Signature(parameters)
    return stringify_signature(shown, show_annotation=False), return_annotation


_PRIVATE_PATH = re.compile(r"dify_async(?:\.testing)?\._\w+\.(\w+)")


def _public_link_text(_app: Sphinx, doctree: nodes.document, _docname: str) -> None:
    """Show ``dify_async._exceptions.DifyError`` as ``DifyError``.

    napoleon writes the type of an attribute from its annotation, with the
    private module that defines it; the link goes to the public name anyway.
    """
    for text in list(doctree.findall(nodes.Text)):
        match = _PRIVATE_PATH.fullmatch(text.astext())
        if match and isinstance(text.parent, nodes.reference):
            text.parent.replace(text, nodes.Text(match[1]))


def setup(app: Sphinx) -> None:
    """Register the fix-ups above."""
    app.connect("missing-reference", _resolve_more)
    app.connect("autodoc-process-signature", _attrs_signature)
    app.connect("doctree-resolved", _public_link_text)


# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"dify_async {release}"
html_static_path = ["_static"]
