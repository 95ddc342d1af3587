"""The import graph of rbzoo/: layers point down, so no module imports itself through others.

Every `import` statement counts, function-local ones included (a local import that dodges a
cycle at import time is still a cycle in the design). The graph is read with `ast`, nothing is
imported. Dynamic imports (`importlib.import_module`) are not seen: the CLI uses one to register
its subcommands, and that is the only one inside the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "rbzoo"

# Who may import the CLI package: the CLI itself, and `python -m rbzoo`.
CLI = "rbzoo.cli"
CLI_ENTRY_POINTS = {"rbzoo.__main__"}


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every .py file of the package."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The package modules an `import`/`from … import` statement in `module` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:  # relative: `from .x import y` in rbzoo.a.b resolves against rbzoo.a
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source not in known:
        return []
    # `from pkg import name` loads the submodule pkg.name when there is one, else pkg itself.
    return sorted({f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names})


def module_imports(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package modules that `source` (the text of `module`) imports anywhere, functions included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_targets(node, module, is_package, known))
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    """module → the rbzoo modules it imports anywhere in its body (function-local imports too)."""
    modules = _modules()
    return {m: module_imports(path.read_text(encoding="utf-8"), m, path.name == "__init__.py", set(modules))
            for m, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every elementary cycle, each written from its alphabetically first module."""
    found: set[tuple[str, ...]] = set()

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                found.add(tuple(path))
            elif nxt > start and nxt not in path:  # each cycle is found once, from its first module
                walk(start, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def _show(cycle: tuple[str, ...]) -> str:
    return " → ".join((*cycle, cycle[0]))


def test_no_import_cycles():
    new = sorted(cycles(import_graph()), key=lambda c: (len(c), c))  # shortest first
    more = f"\n… and {len(new) - 12} more" if len(new) > 12 else ""
    assert not new, f"{len(new)} import cycle(s) in rbzoo/ (layers must point down):\n" + "\n".join(map(_show, new[:12])) + more


def test_only_the_cli_imports_the_cli():
    importers = sorted(m for m, deps in import_graph().items()
                       if any(d == CLI or d.startswith(CLI + ".") for d in deps)
                       and not (m == CLI or m.startswith(CLI + ".") or m in CLI_ENTRY_POINTS))
    assert not importers, f"the CLI is the top layer; these library modules import it: {importers}"


def test_the_graph_sees_every_kind_of_import():
    # The checks above are only as good as the graph: function-local, relative (one and two
    # levels, from a module and from a package's __init__) and absolute imports all count.
    known = {"rbzoo", "rbzoo.a", "rbzoo.b", "rbzoo.sub", "rbzoo.sub.c"}
    local = "import os\ndef f():\n    if True:\n        from .b import thing\n"
    assert module_imports(local, "rbzoo.a", False, known) == {"rbzoo.b"}
    assert module_imports("from .. import a, __version__\n", "rbzoo.sub.c", False, known) == {"rbzoo.a", "rbzoo"}
    assert module_imports("from . import c\n", "rbzoo.sub", True, known) == {"rbzoo.sub.c"}
    assert module_imports("import rbzoo.b\nfrom rbzoo.sub import c\n", "rbzoo.a", False, known) == {"rbzoo.b", "rbzoo.sub.c"}
    g = import_graph()
    assert {"rbzoo.codec", "rbzoo.models._registry"} <= g["rbzoo.checkpoint"] and {"rbzoo.convert", "rbzoo.cli"} <= g["rbzoo.cli.convert"]
    assert cycles({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}) == {("a", "b"), ("a", "b", "c")}
