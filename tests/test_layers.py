"""The import graph keeps DESIGN.md's floors: imports point down, the middle floor's packages stay apart, no cycles.

Run as a script (``python tests/test_layers.py``) to print every import that breaks a floor.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_hpt"

#: floor of each top-level part of the package (a module or a sub-package), lowest first.
FLOORS = {
    **dict.fromkeys(
        (
            "exceptions",
            "domains",
            "conditions",
            "_watched",
            "define_by_run",
            "space",
            "trial",
            "registry",
            "names",
            "checks",
            "failures",
            "surrogate",
            "masking",
        ),
        0,
    ),
    **dict.fromkeys(("objectives", "constraints", "pareto"), 0),
    **dict.fromkeys(("strategies", "pruners", "storage", "lightning", "report"), 1),
    "executors": 2,
    **dict.fromkeys(("search", "result", "driver", "reporting", "proposals", "recovery", "run_scope", "stacking"), 3),
    "search_args": 3,
    **dict.fromkeys(("cli", "testing", "script", "script_trial", "__init__", "__main__"), 4),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (lazy imports included, ``TYPE_CHECKING`` ones not)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
        for stmt in block.body
        for n in ast.walk(stmt)
    }  # imports for annotations only: no dependency at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("lightning_hpt") and t != name:
                found.add(t)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations() -> list[str]:
    """Every import that points up or sideways on the middle floor, and every import cycle."""
    modules = _modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    bad = []
    for m, deps in sorted(graph.items()):
        pm = _part(m) if m != "lightning_hpt" else "__init__"
        for d in sorted(deps):
            pd = _part(d) if d != "lightning_hpt" else "__init__"
            if pm == pd:
                continue
            fm, fd = FLOORS[pm], FLOORS[pd]
            if fd > fm or (fd == fm and fm in (1, 2)):
                bad.append(f"{m} (floor {fm}) imports {d} (floor {fd})")
    bad += [f"cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return bad


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles between the parts of the package (a part may import itself)."""
    parts: dict[str, set[str]] = {}
    for m, deps in graph.items():
        parts.setdefault(_part(m), set()).update(_part(d) for d in deps if _part(d) != _part(m))
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(parts.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(parts):
        if node not in state:
            visit(node, [node])
    return found


def test_imports_point_down_and_do_not_cycle():
    """DESIGN.md 'Layers'; issue 14's measure: no upward import, no cycle."""
    assert violations() == []


def test_every_part_has_a_floor():
    assert {_part(m) for m in _modules()} <= set(FLOORS)


if __name__ == "__main__":
    problems = violations()
    print("\n".join(problems) or f"{len(_modules())} modules: no upward import, no sideways import, no cycle")
    sys.exit(1 if problems else 0)
