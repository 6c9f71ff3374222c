"""
YAML to plain Python with line numbers and environment expansion.

Variables are expanded inside string scalars (keys and values) after the YAML
structure is read, so a value can never inject YAML, and comments such as the
seed's C{# yaml-language-server: $schema=...} are left alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*)|(?P<escaped>\$))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STR = "tag:yaml.org,2002:str"

Path = tuple[str | int, ...]


class SourceError(Exception):
    """A problem located at a config path; C{line} is 1-based, or C{None}."""

    def __init__(self, path: Path, message: str, line: int | None = None) -> None:
        super().__init__(path, message, line)
        self.path = path
        self.message = message
        self.line = line


def expand(text: str, environ: Mapping[str, str], path: Path, line: int | None) -> str:
    """
    Expand C{$VAR}, C{${VAR}}; C{$$} is a literal C{$}. An unset variable is
    an error naming the variable, never its (absent) value.
    """

    def substitute(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") if match.group("braced") is not None else match.group("bare")
        if not _NAME.match(name):
            raise SourceError(path, f"invalid variable reference ${{{name}}}", line)
        if name not in environ:
            raise SourceError(path, f"environment variable {name} is not set", line)
        return environ[name]

    return _VARIABLE.sub(substitute, text)


def load_yaml(text: str, environ: Mapping[str, str]) -> tuple[Any, dict[Path, int]]:
    """
    Parse C{text}; return the data and a map from each path to its 1-based
    line. Raises L{SourceError} for malformed YAML or a missing variable.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise SourceError((), f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
    lines: dict[Path, int] = {}
    if node is None:
        return None, lines
    return _convert(node, (), environ, lines), lines


def _convert(node: yaml.Node, path: Path, environ: Mapping[str, str], lines: dict[Path, int]) -> Any:
    line = node.start_mark.line + 1
    lines[path] = line
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, path, environ, {})
            if not isinstance(key, str):
                raise SourceError(path, f"keys must be strings, not {key!r}", key_node.start_mark.line + 1)
            if key in result:
                raise SourceError(path + (key,), "duplicate key", key_node.start_mark.line + 1)
            result[key] = _convert(value_node, path + (key,), environ, lines)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, path + (i,), environ, lines) for i, item in enumerate(node.value)]
    if node.tag == _STR:
        return expand(node.value, environ, path, line)
    # Non-string scalars (ints, bools, null) go through PyYAML's own resolver.
    return yaml.SafeLoader("").construct_object(node)
