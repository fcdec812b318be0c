"""Every call the checks can plan, read from their source: needs, lookups and actions.

Read from the source rather than from passes so that what is planned only on rare data is
included too. A check names each call as ``call(Protocol.method, target, key=...)`` (see
:mod:`watchdogd.ports`), so the protocol, the method and the keywords are literals here.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass

from watchdogd import checks, ports

_SOURCE_OF = {protocol.__name__: source for protocol, source in ports.SOURCES.items()}


@dataclass(frozen=True)
class Planned:
    """One ``call(...)`` in a check module, and the remediation it runs, if it is an action."""

    module: str
    line: int
    source: str
    method: str
    keywords: tuple[str, ...]
    #: the remediation name when the call is an ``Action.bind``'s, else None (a need)
    action: str | None


def planned_calls() -> list[Planned]:
    """Every ``call(...)`` of every registered check module."""
    found: list[Planned] = []
    modules = {inspect.getmodule(spec.detect) for spec in checks.REGISTRY.values()}
    for module in modules:
        assert module is not None
        tree = ast.parse(inspect.getsource(module))
        actions: dict[int, str] = {}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "bind" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "Action"):
                name, bound = node.args[0], node.args[1]
                assert isinstance(name, ast.Constant) and isinstance(name.value, str), (
                    f"{module.__name__} line {node.lineno}: an action's name must be a literal")
                actions[id(bound)] = name.value
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "call"):
                continue
            method = node.args[0]
            assert (isinstance(method, ast.Attribute) and isinstance(method.value, ast.Name)
                    and method.value.id in _SOURCE_OF), (
                f"{module.__name__} line {node.lineno}: call() takes Protocol.method")
            assert not any(k.arg is None for k in node.keywords), (
                f"{module.__name__} line {node.lineno}: call() keywords must be spelled out")
            found.append(Planned(module.__name__, node.lineno, _SOURCE_OF[method.value.id],
                                 method.attr, tuple(k.arg for k in node.keywords if k.arg),
                                 actions.get(id(node))))
    return found
