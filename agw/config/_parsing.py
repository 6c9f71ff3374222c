"""
The parser's groundwork: L{ConfigError} (one line, with path and YAML line)
and L{BaseParser}, whose checks every part of the config shares.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from agw.config._shape import fields_of
from agw.config._unsupported import UNSUPPORTED
from agw.config._yamlsource import Path

T = TypeVar("T")


class ConfigError(Exception):
    """
    The config is unusable. C{str()} is one line naming the path and, where
    known, the YAML line: C{binds[0].port: expected an integer (line 3)}.
    """

    def __init__(self, path: str, message: str, line: int | None = None, source: str | None = None) -> None:
        super().__init__(path, message, line, source)
        self.path = path
        self.message = message
        self.line = line
        self.source = source

    def __str__(self) -> str:
        where = self.path or "config"
        suffix = ""
        if self.line is not None:
            suffix = f" ({self.source}, line {self.line})" if self.source else f" (line {self.line})"
        return f"{where}: {self.message}{suffix}"


def format_path(path: Path) -> str:
    """C{("binds", 0, "port")} -> C{binds[0].port}."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class BaseParser:
    """Checks shared by every part of the parser: types, known keys, and errors that say where."""

    def __init__(self, lines: dict[Path, int], source: str | None) -> None:
        self._lines = lines
        self._source = source

    def fail(self, path: Path, message: str) -> ConfigError:
        line = None
        for depth in range(len(path), -1, -1):
            line = self._lines.get(path[:depth])
            if line is not None:
                break
        return ConfigError(format_path(path), message, line, self._source)

    def mapping(self, value: Any, path: Path, kind: str, allowed: Collection[str] | None = None) -> dict[str, Any]:
        """C{value}, a mapping of C{kind} with the fields L{agw.config._shape} gives it (or C{allowed})."""
        if allowed is None:
            allowed = fields_of(kind)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {kind_of(value)}")
        for key in value:
            if key in allowed:
                continue
            if key in UNSUPPORTED.get(kind, ()):
                raise self.fail(path + (key,), "supported by agentgateway but not by agw yet")
            raise self.fail(path + (key,), "unknown field")
        return value

    def items(self, value: Any, path: Path, each: Callable[[Any, Path, int], T], required: bool = False) -> tuple[T, ...]:
        if value is None and not required:
            return ()
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {kind_of(value)}")
        return tuple(each(item, path + (i,), i) for i, item in enumerate(value))

    def string(self, value: Any, path: Path, optional: bool = False) -> str:
        if value is None and optional:
            return None  # type: ignore[return-value]
        if not isinstance(value, str):
            raise self.fail(path, f"expected a string, got {kind_of(value)}")
        return value

    def key(self, value: Any, path: Path) -> str:
        """
        A credential (a backend or client key): a string without the
        whitespace that ends it in a file (a Kubernetes secret, C{echo >}),
        which would otherwise go into a header line as part of the key (or
        end the line early, in a handshake Autobahn writes as it is). Any
        other control character is refused; the message never shows the key.
        """
        text = self.string(value, path).rstrip(" \t\r\n")
        if not text:
            raise self.fail(path, "expected a key, got an empty string")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise self.fail(path, "a key cannot contain control characters (line breaks, tabs) but at its end")
        return text

def kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
