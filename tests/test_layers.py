"""Imports run one way (docs/design.md, "Module layout"): the stage scripts and the pipeline's machinery on top; the
trainer, its config and checks, evaluation, the fast path, the baselines and item tokens in the middle; data,
hardness, encoders, noise, responsiveness and the test models at the bottom; utilities below all. Inside the top
layer, the scripts and the pipeline modules import each other without a cycle, counting every import (also those
inside functions; tests/test_import_cycles.py checks the whole package's module-level imports)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hanorec_trl"
LAYERS = {
    0: ("files", "model_utils", "processing", "pretrained", "checkpoints", "callbacks"),
    1: ("data", "hardness", "encoders", "noise", "responsiveness", "testing"),
    2: ("config", "trainer", "lambda_column", "nonfinite", "evaluation", "fast", "baselines", "sasrec", "item_tokens",
        "models", "reference"),
    3: ("pipeline", "scripts"),
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


def test_the_layers_are_the_package():
    """Every layer names a module or package that exists (a renamed module cannot keep an empty slot)."""
    present = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
               if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert set(RANK) == present - {"__init__"}


def test_the_scripts_and_the_pipeline_modules_import_each_other_without_a_cycle():
    """Every import counts, also those inside functions; a package's ``__init__.py`` (its public names) is left
    out, so ``hanorec_trl.pipeline`` re-exporting the recipe runner is no edge."""
    top = [PACKAGE / "pipeline", PACKAGE / "scripts"]

    def name(path: Path) -> str:
        return ".".join(("hanorec_trl", *path.relative_to(PACKAGE).with_suffix("").parts))

    inside = ("hanorec_trl.pipeline.", "hanorec_trl.scripts.")
    graph = {name(path): {target for target in _imports(path) if target.startswith(inside)}
             for folder in top for path in sorted(folder.rglob("*.py")) if path.name != "__init__.py"}
    assert {"hanorec_trl.pipeline.recipe", "hanorec_trl.pipeline.stage", "hanorec_trl.scripts.dpo"} <= set(graph)
    assert "hanorec_trl.scripts.data" in graph["hanorec_trl.pipeline.recipe"]  # the runner calls the stages
    assert "hanorec_trl.pipeline.stage" in graph["hanorec_trl.scripts.data"]  # the stages use the machinery
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
