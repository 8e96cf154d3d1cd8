"""No import cycle in the package (issue 27 item 7: baselines <-> sasrec was one), checked statically over every
module's top-level imports (``if TYPE_CHECKING:`` blocks included), and the baseline modules import alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hanorec_trl"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (imports inside functions run later and are not
    import-time cycles; ``if`` blocks, e.g. ``TYPE_CHECKING``, are counted)."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()

        def visit(body, package=package, found=found):
            for node in body:
                if isinstance(node, (ast.If, ast.Try)):
                    visit(node.body)
                    visit(getattr(node, "orelse", []))
                elif isinstance(node, ast.ImportFrom):
                    base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                    target = ".".join(base + ([node.module] if node.module else []))
                    for alias in node.names:
                        found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
                elif isinstance(node, ast.Import):
                    found.update(alias.name for alias in node.names)

        visit(ast.parse(path.read_text(encoding="utf-8")).body)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each holds at least one cycle)."""
    order, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in order:
            visit(v)
    return found


def test_the_check_finds_a_type_checking_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import B\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n")
    (pkg / "c.py").write_text("def f():\n    from .a import A\n")  # a function-level import is no cycle
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_no_import_cycle_in_the_package():
    graph = import_graph(PACKAGE)
    assert "hanorec_trl.sasrec" in graph["hanorec_trl.baselines"]
    assert "hanorec_trl.baselines" not in graph["hanorec_trl.sasrec"]
    assert cycles(graph) == []


@pytest.mark.parametrize("module", ["hanorec_trl.sasrec", "hanorec_trl.baselines", "hanorec_trl.data.interactions"])
def test_each_baseline_module_imports_alone(module):
    code = f"import sys, {module}; print('hanorec_trl.baselines' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("True" if module == "hanorec_trl.baselines" else "False")
