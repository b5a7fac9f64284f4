"""The package's structure, redrawn from its imports with `ast`: dependencies point one way and form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
# What the model may not import: it reads no files and knows nothing of the layers built on it.
ABOVE_THE_MODEL = ("checkpoints", "data", "training", "evaluation", "cli", "serve", "export", "predictor")
MODEL_MAY_IMPORT = {"clipseg.checkpoints.io"}  # the safe file I/O `save_pretrained` writes with
# Known exceptions, each to be removed: `CLIPSeg.save_pretrained(layout=...)` (issue 14) calls the layout writers.
KNOWN_LAZY_IMPORTS: set[tuple[str, str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in sorted((SOURCE / "clipseg").rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, *, module_level: bool) -> set[str]:
    """The clipseg modules `name` imports: at module level (what runs on import), or anywhere in the file.
    Imports under `if TYPE_CHECKING:` never run and are left out."""
    path, is_package = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        if not module_level or isinstance(node, (ast.If, ast.Try)):  # module-level control flow still runs
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            if isinstance(node, ast.Try):
                pending.extend(stmt for handler in node.handlers for stmt in handler.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # `from package import submodule` imports the submodule
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    imported = {module for module in found if module in MODULES and module != name}
    return imported if module_level else imported - {b for a, b in KNOWN_LAZY_IMPORTS if a == name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def test_the_import_reader_sees_relative_and_absolute_imports():
    # Facts read off the source by hand: precision.py imports `from .model import onednn` and the model's class.
    assert {"clipseg.model.onednn", "clipseg.model.clipseg"} <= _imports("clipseg.precision", module_level=True)
    assert "clipseg.checkpoints.load" in _imports("clipseg.checkpoints", module_level=True)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module_level", [True, False], ids=["module-level", "function-local-too"])
def test_no_import_cycles_among_modules(module_level):
    # With function-local imports counted, a lazy import that only dodges a cycle shows up as one.
    graph = {name: _imports(name, module_level=module_level) for name in MODULES}
    assert _cycles(graph) == []


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("clipseg.model")))
def test_the_model_imports_nothing_built_on_it(name):
    # Function-local imports count too: a lazy import is still a dependency.
    forbidden = {
        module
        for module in _imports(name, module_level=False)
        if module.split(".")[1] in ABOVE_THE_MODEL and module not in MODEL_MAY_IMPORT
    }
    assert not forbidden, f"{name} imports {sorted(forbidden)}"


# Training and evaluation are peers: what both need (calibration, thresholds) lies beneath them. The one crossing
# is by design: validation during training scores with the paper's metrics, `clipseg.evaluation.metrics`.
TRAINING_MAY_IMPORT_FROM_EVALUATION = {"clipseg.evaluation.metrics"}


@pytest.mark.parametrize(
    ("layer", "peer", "allowed"),
    [("training", "evaluation", TRAINING_MAY_IMPORT_FROM_EVALUATION), ("evaluation", "training", set())],
    ids=["training-imports-no-evaluation", "evaluation-imports-no-training"],
)
def test_training_and_evaluation_do_not_import_each_other(layer, peer, allowed):
    crossing = {
        (name, module)
        for name in MODULES
        if name.startswith(f"clipseg.{layer}")
        for module in _imports(name, module_level=False)
        if (module == f"clipseg.{peer}" or module.startswith(f"clipseg.{peer}.")) and module not in allowed
    }
    assert not crossing, sorted(crossing)


def test_calibration_lies_beneath_training_and_evaluation():
    imported = _imports("clipseg.calibration", module_level=False) | _imports("clipseg.thresholds", module_level=False)
    assert not {module for module in imported if module.split(".")[1] in ("training", "evaluation")}, imported
