"""Sphinx configuration for the dify_async documentation."""

from __future__ import annotations

from importlib.metadata import version as _installed_version

project = "dify_async"
author = "dify_async contributors"
copyright = "dify_async contributors"
release = _installed_version("dify-async")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST ---------------------------------------------------------------------

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc and napoleon -----------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- references -----------------------------------------------------------------

# Every reference must resolve (the build runs with -n). The documentation is
# built without network access, so intersphinx cannot fetch the inventories of
# Python and aiohttp, and references to their types would dangle. They are
# listed here instead: each is a well-known name a reader can look up, and
# the type hints of the public API cannot avoid them.
nitpicky = True
nitpick_ignore = [
    # aiohttp: the session and timeout that users may pass in.
    ("py:class", "aiohttp.ClientSession"),
    ("py:class", "aiohttp.ClientTimeout"),
    ("py:class", "aiohttp.client.ClientSession"),
    ("py:class", "aiohttp.client.ClientTimeout"),
    # The standard library's types in signatures and docstrings.
    ("py:class", "datetime.datetime"),
    ("py:class", "uuid.UUID"),
    ("py:class", "collections.Counter"),
]
nitpick_ignore_regex = [
    # collections.abc's Iterable, AsyncIterator, Callable, Mapping, ...
    ("py:class", r"collections\.abc\.\w+"),
]

# -- HTML -----------------------------------------------------------------------

html_theme = "furo"
html_title = f"dify_async {release}"
html_static_path = ["_static"]
