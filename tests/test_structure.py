"""The package's import structure: no import circles, and no module importing another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fm2edge"


def import_graph(root: Path, package: str) -> tuple[dict[str, set[str]], list[str]]:
    """{module: modules it imports (inside the package)} and the private names imported across modules; every
    import counts, those inside functions too."""
    mods = {".".join((package, *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    edges[m].add(full if full in mods else node.module)
                    if alias.name.startswith("_") and node.module != m:
                        private.append(f"{m} imports {alias.name} from {node.module}")
            elif isinstance(node, ast.Import):
                edges[m].update(a.name for a in node.names if a.name in mods)
    return {m: {t for t in ts if t in mods and t != m} for m, ts in edges.items()}, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import circles, each as the list of modules around it (a package counts as its ``__init__``)."""
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_no_import_circles_and_no_private_names_across_modules():
    edges, private = import_graph(SRC, "fm2edge")
    assert len(edges) > 30
    assert cycles(edges) == []
    assert private == []


def test_the_checks_find_a_circle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import _g\n")
    (pkg / "b.py").write_text("from pkg.a import f\n\ndef _g():\n    pass\n")
    edges, private = import_graph(pkg, "pkg")
    assert cycles(edges) in ([["pkg.a", "pkg.b", "pkg.a"]], [["pkg.b", "pkg.a", "pkg.b"]])
    assert private == ["pkg.a imports _g from pkg.b"]
