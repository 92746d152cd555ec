"""The package's rooms import downward only, with no cycle (the architecture of README's Layout section)."""

from __future__ import annotations

import ast
from pathlib import Path

import mfnet

PACKAGE = Path(mfnet.__file__).parent

# Each room may import the rooms of lower levels and its own; `errors` and `labels` are shared leaves below all.
LEVELS = {"errors": 0, "labels": 1, "models": 2, "data": 2, "fastpath": 3, "engine": 4, "tools": 5, "cli": 6}
NEVER = {("models", "data"), ("data", "models")}  # models know nothing of data, data nothing of models


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the mfnet modules it imports anywhere in its file (top level or not)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        found = set()
        tree = ast.parse(path.read_text())
        typing_only = {  # imports under `if TYPE_CHECKING:` never run
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mfnet"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("mfnet"))
        graph[name] = found
    return graph


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_rooms_import_downward_only() -> None:
    upward = []
    for module, imported in _imports().items():
        room = _room(module)
        if room is None or room not in LEVELS:
            continue
        for target in imported:
            other = _room(target)
            if other is None or other == room or other not in LEVELS:
                continue
            if LEVELS[other] > LEVELS[room] or (room, other) in NEVER or LEVELS[other] == LEVELS[room]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layout:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _imports()
    known = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {t for t in (resolve(x) for x in targets) if t and t != m} for m, targets in graph.items()}
    # a package's __init__ importing its own modules is how packages expose names, not a cycle of logic
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_import_mfnet_loads_only_what_its_names_need() -> None:
    import subprocess
    import sys

    code = "import sys, mfnet; print(' '.join(sorted(m for m in sys.modules if m.startswith('mfnet.'))))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    rooms = {m.split(".")[1] for m in loaded}
    assert rooms <= {"errors", "labels", "models", "fastpath"}, rooms
