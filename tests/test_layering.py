"""Imports point downward only: shared helpers <- model <- processing <- data <- training <- applications.

Walked with ``ast`` over every module of the package (imports inside functions included), so a lazy
import cannot hide an upward edge. The layers are the README's Layout section.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fila_train"

# Rank of each top-level package; "root" is the modules beside them (cli, registration, __init__). A module
# may import only from a lower rank or its own package: packages on one rank are peers and stay apart.
LAYERS: dict[str, int] = {
    "utils": 0,
    "model": 1,
    "processing": 2,
    "data": 3,
    "training": 4,
    "export": 5, "inference": 5, "demo": 5,
    "evaluation": 6, "bench": 6,
    "ablation": 7,
    "root": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every fila_train module ``path`` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {target for target in found if target.split(".")[0] == "fila_train"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    package = PACKAGE / parts[1] if len(parts) > 1 else None
    return parts[1] if package is not None and package.is_dir() else "root"


def edges() -> list[tuple[str, str]]:
    return [(module_name(path), target) for path in sorted(PACKAGE.rglob("*.py")) for target in imported_modules(path)]


def test_every_package_has_a_layer():
    assert {layer_of(module_name(path)) for path in PACKAGE.rglob("*.py")} <= set(LAYERS)


def test_imports_point_downward_only():
    upward = [f"{source} -> {target}" for source, target in edges()
              if layer_of(source) != layer_of(target) and LAYERS[layer_of(target)] >= LAYERS[layer_of(source)]]
    assert upward == []


def test_the_walk_sees_relative_lazy_and_absolute_imports():
    """The test above can fail: the walk finds known edges of each kind."""
    found = set(edges())
    assert ("fila_train.training.cli", "fila_train.training.train") in found  # relative, inside a function
    assert ("fila_train.model.vision.hybrid_encoder", "fila_train.utils.image_size") in found  # relative, 3 dots
    assert ("fila_train.bench.mmfuser", "fila_train.model.connector.mmfuser") in found  # absolute
