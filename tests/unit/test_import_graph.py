"""Imports point down only: cli -> app -> daemon -> engine -> checks/policy/store/notify ->
sources -> model, and ``checks/`` never imports ``sources/``.

Every import counts, at module level, inside functions and under TYPE_CHECKING: a
deferred import is still a dependency a newcomer has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import watchdogd

PACKAGE = Path(watchdogd.__file__).parent

#: a module's layer; a module may import its own layer's or lower layers' modules only.
#: ``sim`` is the simulated world: only tests, benchmarks and ``demo`` use it.
LAYERS: list[set[str]] = [
    {"__init__", "model", "text", "times", "urls", "slugs", "ports", "logs", "sdnotify",
     "acklinks"},
    {"config"},
    {"sources"},
    {"checks", "policy", "store", "maintenance"},
    {"report", "notify", "diskmap", "digest"},
    {"engine", "leader", "metrics", "repair", "undo", "listener", "web"},
    {"daemon"},
    {"app"},
    {"cli", "__main__", "sim"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def unit(module: str) -> str:
    """The layer unit of a dotted watchdogd module: its top-level module or package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> dict[str, set[str]]:
    """module -> the watchdogd modules it imports (dotted)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("watchdogd")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.startswith("watchdogd"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names
                          if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")
                              ).with_suffix(".py").exists()}
        graph[name] = found
    return graph


def test_every_module_has_a_layer() -> None:
    assert {unit(m) for m in imports()} <= set(LAYER)


def test_imports_point_down_only() -> None:
    wrong = []
    for module, targets in imports().items():
        for target in targets:
            if LAYER[unit(target)] > LAYER[unit(module)]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_checks_never_import_sources() -> None:
    wrong = [f"{m} imports {t}" for m, ts in imports().items() if m.startswith("watchdogd.checks")
             for t in ts if t.startswith("watchdogd.sources")]
    assert wrong == []


def test_there_is_no_cycle() -> None:
    modules = imports()  # parsed once: calling it per edge parsed every file ~500 times
    graph = {m: {t for t in ts if t in modules} for m, ts in modules.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package imports its own modules (checks/__init__ the check modules, which import
    # checks.common): only cycles across units count
    across = [c for c in cycles if len({unit(p) for p in c.split(" -> ")}) > 1]
    assert across == []
