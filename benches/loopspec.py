"""Loop factory paths: ``module:callable`` with optional ``?key=value&...`` keywords.

``glassloop:new_event_loop?record=false`` means
``glassloop.new_event_loop(record=False)``. Values ``true``/``false``/``none``
become ``True``/``False``/``None``; integers and floats are parsed; anything else
stays a string.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from dataclasses import dataclass, field
from urllib.parse import parse_qsl


@dataclass(frozen=True)
class LoopSpec:
    """A parsed factory path; ``text`` is what the user wrote."""

    text: str
    module: str
    attr: str
    kwargs: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short name for tables: ``uvloop``, ``glassloop?record=false``."""
        name = self.module if self.attr == "new_event_loop" else f"{self.module}:{self.attr}"
        query = self.text.partition("?")[2]
        return f"{name}?{query}" if query else name

    def factory(self):
        """Import the module and return the callable (ImportError if missing)."""
        return getattr(importlib.import_module(self.module), self.attr)

    def new_loop(self):
        return self.factory()(**self.kwargs)

    def version(self) -> str:
        """The distribution version of the loop's package (Python's for asyncio)."""
        if self.module.split(".")[0] == "asyncio":
            return platform.python_version()
        top = self.module.split(".")[0]
        try:
            return importlib.metadata.version(top)
        except importlib.metadata.PackageNotFoundError:
            return str(getattr(importlib.import_module(top), "__version__", "unknown"))


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(text: str) -> LoopSpec:
    path, _, query = text.strip().partition("?")
    module, sep, attr = path.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"loop path must look like module:callable[?k=v&...], got {text!r}")
    kwargs = {key: parse_value(value) for key, value in parse_qsl(query, keep_blank_values=True)}
    return LoopSpec(text.strip(), module, attr, kwargs)
