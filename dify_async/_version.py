"""The installed version of the package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dify-async")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"
