"""The apps build on each other in one direction, and no module of ours imports itself round a cycle.

    flags <- monitoring <- alerts <- api, dashboard

A module may import its own app and the apps below it, never one above or beside it (api and dashboard
are both on top and use neither each other). Every import counts: at the top of a module and inside a
function alike, since an import moved into a function to dodge a cycle still is one. rolloutadmin/ (the
project: settings, urls, the request plumbing) is outside the layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"flags": 0, "monitoring": 1, "alerts": 2, "api": 3, "dashboard": 3}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "alerts.plans"
    target: str  # the module imported, e.g. "flags.services"
    where: str  # "alerts/plans.py:27"

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for app in LAYERS
        for path in sorted((ROOT / app).rglob("*.py"))
        if "migrations" not in path.parts
    }


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that `name` (a module, or a name inside one) refers to, or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[Import]:
    return _scan(module, path.read_text(), where=str(path.relative_to(ROOT)), package=path.name == "__init__.py")


def _scan(module: str, text: str, *, where: str, package: bool = False) -> list[Import]:
    """The imports of our modules in `text`, the source of `module` (a package's __init__ when `package`)."""
    found: list[Import] = []
    tree = ast.parse(text, filename=where)
    for node in ast.walk(tree):  # every import: module level, in functions, under TYPE_CHECKING
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module if package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = f"{parent}.{base}" if base else parent
            # `from pkg import name`: the submodule pkg.name when there is one, else pkg itself.
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.append(Import(module, target, f"{where}:{node.lineno}"))
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _app(module: str) -> str:
    return module.partition(".")[0]


def test_the_scan_sees_imports_at_the_top_and_inside_functions() -> None:
    scanned = {(imp.source, imp.target) for imp in IMPORTS}
    assert ("alerts.plans", "flags.services") in scanned
    assert ("alerts.apps", "alerts.receivers") in scanned  # imported inside ready()
    assert len(MODULES) > 40


def _cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of the import graph with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _describe_cycles(imports: list[Import]) -> list[str]:
    described = []
    for component in _cycles(imports):
        members = set(component)
        edges = [str(imp) for imp in imports if imp.source in members and imp.target in members]
        described.append(f"cycle among {', '.join(component)}:\n  " + "\n  ".join(edges))
    return described


def test_no_import_cycles_between_our_modules() -> None:
    described = _describe_cycles(IMPORTS)
    assert not described, "\n".join(described)


def test_a_cycle_through_an_import_inside_a_function_is_named() -> None:
    imports = [
        *_scan("alerts.services", "from . import plans, guardrails\n", where="alerts/services.py"),
        *_scan("alerts.plans", "def f():\n    from . import services\n", where="alerts/plans.py"),
    ]
    assert _describe_cycles(imports) == [
        "cycle among alerts.plans, alerts.services:\n"
        "  alerts/services.py:1: alerts.services imports alerts.plans\n"
        "  alerts/plans.py:2: alerts.plans imports alerts.services"]


def _violations(imports: list[Import]) -> list[str]:
    return [
        f"{imp} ({_app(imp.source)} builds only on {', '.join(_below(_app(imp.source))) or 'no other app'})"
        for imp in imports
        if _app(imp.source) != _app(imp.target) and LAYERS[_app(imp.target)] >= LAYERS[_app(imp.source)]
    ]


def _below(app: str) -> list[str]:
    return sorted(other for other, rank in LAYERS.items() if rank < LAYERS[app])


def test_no_app_imports_an_app_above_or_beside_it() -> None:
    violations = _violations(IMPORTS)
    assert not violations, "layer violations:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("module", "text", "expected"),
    [
        ("flags.models", "from alerts import plans\n",
         "flags/probe.py:1: flags.models imports alerts.plans (flags builds only on no other app)"),
        ("monitoring.selectors", "import os\n\ndef f():\n    from dashboard.views import audit\n",
         "flags/probe.py:4: monitoring.selectors imports dashboard.views.audit "
         "(monitoring builds only on flags)"),
        ("api.views", "import dashboard.access\n",
         "flags/probe.py:1: api.views imports dashboard.access (api builds only on alerts, flags, monitoring)"),
    ],
)
def test_a_violation_is_named_with_its_place(module: str, text: str, expected: str) -> None:
    assert _violations(_scan(module, text, where="flags/probe.py")) == [expected]


def test_a_lower_app_and_the_own_app_are_allowed() -> None:
    text = "from flags import services\nfrom . import health\nfrom .models import Alert\n"
    assert [str(imp) for imp in _scan("alerts.plans", text, where="x.py")] == [
        "x.py:1: alerts.plans imports flags.services", "x.py:2: alerts.plans imports alerts.health",
        "x.py:3: alerts.plans imports alerts.models"]
    assert _violations(_scan("alerts.plans", text, where="x.py")) == []
