"""Imports run one way (docs/design.md, "Module layout"): pipeline on top; trainer, evaluation, fast path and the
baselines in the middle; data, hardness, encoders, noise and responsiveness at the bottom; utilities below all. Inside
the pipeline, its modules import each other without a cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hanorec_trl"
LAYERS = {
    0: ("files", "model_utils", "processing", "pretrained", "checkpoints"),
    1: ("data", "hardness", "encoders", "noise", "responsiveness", "testing"),
    2: ("config", "trainer", "evaluation", "fast", "baselines", "sasrec", "item_tokens"),
    3: ("pipeline",),
}
RANK = {name: rank for rank, names in LAYERS.items() for name in names}


def _top(module: str) -> str:
    """``hanorec_trl.<top>...`` -> ``<top>``."""
    return module.split(".")[1]


def _imports(path: Path) -> list[str]:
    """Every hanorec_trl module ``path`` imports, anywhere in the file, as an absolute dotted name."""
    package = ["hanorec_trl", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("hanorec_trl."):
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("hanorec_trl.")]
    return [name for name in found if name.count(".") >= 1]


def test_every_module_has_a_layer_and_imports_run_downwards():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue  # the package's lazy public names
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        assert own in RANK, f"{path.relative_to(PACKAGE)} is in no layer of docs/design.md"
        for target in _imports(path):
            if RANK[_top(target)] > RANK[own]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not wrong, wrong


def test_the_pipeline_modules_import_each_other_without_a_cycle():
    """Every import counts, also those inside functions; ``hanorec_trl/pipeline/__init__.py`` (the public names)
    is left out, a package's ``__init__.py`` is the package's node."""
    pipeline = PACKAGE / "pipeline"

    def name(path: Path) -> str:
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        return ".".join(("hanorec_trl", *(parts[:-1] if parts[-1] == "__init__" else parts)))

    graph = {name(path): {target for target in _imports(path) if target.startswith("hanorec_trl.pipeline.")}
             for path in sorted(pipeline.rglob("*.py")) if path != pipeline / "__init__.py"}
    assert "hanorec_trl.pipeline.stages.context" in graph and "hanorec_trl.pipeline.variants" in graph
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + (module,))}"
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, path + (module,))
        done.add(module)

    for module in graph:
        visit(module, ())
