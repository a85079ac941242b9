"""The package layout: a folder is a layer, and imports only point down (no cycles).

Walks every module of ``jaxdiff`` with :mod:`ast` (module-level and function-level imports,
absolute and relative), resolves each import to a module of the package, and checks it against
the layer rules below.  Nothing of jaxdiff is imported.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "jaxdiff"

#: Which layers (first package level) each layer may import.  The package root re-exports.
ALLOWED = {
    "core": {"core"},
    "image": {"core", "image"},
    "fit": {"core", "image", "fit"},
    "testing": {"core", "image", "testing"},
    "tasks": {"core", "image", "fit", "tasks"},
    "pipeline": {"core", "image", "fit", "tasks", "pipeline"},
    "cli": {"core", "image", "fit", "tasks", "testing", "pipeline", "cli"},
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(modules, current, is_package, node):
    """Module names of jaxdiff that an import node refers to."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == "jaxdiff" or alias.name.startswith("jaxdiff."):
                out.append(alias.name)
        return out
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == "jaxdiff" or target.startswith("jaxdiff.")):
        return out
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in modules else target)
    return out


def _import_graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets.update(_resolve(modules, name, path.name == "__init__.py", node))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _layer(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root


def test_every_module_belongs_to_a_layer():
    for name in _modules():
        layer = _layer(name)
        assert layer is None or layer in ALLOWED, f"{name}: top-level module outside the layers {sorted(ALLOWED)}"


def test_imports_point_down():
    bad = []
    for name, targets in _import_graph().items():
        layer = _layer(name)
        if layer is None:
            continue
        for t in sorted(targets):
            if _layer(t) is None or _layer(t) not in ALLOWED[layer]:
                bad.append(f"{name} -> {t}")
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _import_graph()
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph[n]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source, expected", [
    ("from ..image.image import Exposure", "jaxdiff.image.image"),
    ("from . import stats", "jaxdiff.core.stats"),
    ("import jaxdiff.tasks", "jaxdiff.tasks"),
])  # fmt: skip
def test_resolver_sees_relative_and_absolute_imports(source, expected):
    """The walker itself: an upward import written in each style is resolved (so it would fail)."""
    modules = _modules()
    node = ast.parse(source).body[0]
    assert expected in _resolve(modules, "jaxdiff.core.zogy", False, node)
