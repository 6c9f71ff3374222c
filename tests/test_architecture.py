"""
The package map holds: no import circles (counting imports inside
functions and under C{TYPE_CHECKING}: a circle hidden there is still a
circle), each package imports only the layers below it, modules stay small.
docs/architecture.md draws the same map.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPO

# A package may import its own modules and those of lower layers only.
LAYERS = {
    "agw.config": 0,
    "agw._internals": 0,
    # What may happen (keys, rate limits, budget states, guards, enrichment): pure, imports only agw.config.
    "agw.decisions": 1,
    # What happened (usage, metrics, the access log, spend and its ledger); asks agw.decisions.
    "agw.metering": 2,
    "agw.routing": 3,
    "agw.http": 4,
    "agw.realtime": 4,
    "agw.testing": 4,
    "agw.tracing": 4,  # the fake provider needs only agw.config; agw.serve's --demo runs it
    # Calls that do not pass through agw (WebRTC): the provider's HTTP endpoints (agw.http) and the sideband (agw.realtime).
    "agw.calls": 5,
    "agw.serve": 6,
    "agw": 7,
}
MAX_LINES = 310


def agw_modules() -> dict[str, str]:
    """Module name -> file, for every module of the agw package."""
    found = {}
    for root, _, files in os.walk(os.path.join(REPO, "agw")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def imports_of(path: str, modules: dict[str, str]) -> Iterator[str]:
    """The agw modules C{path} imports, wherever in the file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agw"):
            yield node.module
            for alias in node.names:  # "from agw.x import y" where y is a module
                if f"{node.module}.{alias.name}" in modules:
                    yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("agw"))


def layer_of(module: str) -> str:
    """The C{LAYERS} key a module belongs to (its package, or agw itself)."""
    return max((name for name in LAYERS if module == name or module.startswith(name + ".")), key=len)


def import_graph() -> dict[str, set[str]]:
    modules = agw_modules()
    return {module: set(imports_of(path, modules)) - {module} for module, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class ArchitectureTests(SynchronousTestCase):
    def test_no_import_circles(self) -> None:
        self.assertEqual(cycles(import_graph()), [])

    def test_circles_are_detected(self) -> None:
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])

    def test_layers(self) -> None:
        wrong = []
        for module, imported in import_graph().items():
            own = layer_of(module)
            for other in imported:
                theirs = layer_of(other)
                if theirs != own and LAYERS[theirs] >= LAYERS[own]:
                    wrong.append(f"{module} imports {other}")
        self.assertEqual(wrong, [])

    def test_plugin_imports_nothing_heavy(self) -> None:
        with open(os.path.join(REPO, "twisted", "plugins", "agw_plugin.py")) as f:
            tree = ast.parse(f.read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        self.assertEqual(imported, {"twisted.application.service"})

    def test_modules_stay_small(self) -> None:
        large = {}
        for module, path in agw_modules().items():
            with open(path) as f:
                lines = sum(1 for _ in f)
            if lines > MAX_LINES:
                large[module] = lines
        self.assertEqual(large, {})


class PackagingTests(SynchronousTestCase):
    def test_every_package_is_shipped(self) -> None:
        """A non-editable install (the README's first command, the image) ships only the packages pyproject names."""
        import tomllib

        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            shipped = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
        found = {
            os.path.relpath(root, REPO).replace(os.sep, ".")
            for root, _, files in os.walk(os.path.join(REPO, "agw"))
            if "__init__.py" in files
        }
        self.assertEqual(found - shipped, set())
