"""The folders are the architecture: each layer imports only the layers below it.

``trainables/`` (the core and its edge) imports neither ``sweep/`` nor ``analysis/``; the core
(everything in ``trainables/`` outside ``trainables/edge/``) is plain PyTorch and imports
neither Ray, MLflow nor the edge. Read from the source with ``ast``, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINABLES = ROOT / "trainables"
EDGE = TRAINABLES / "edge"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(
            name
            for name in imported_modules(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        )
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def core_modules() -> list[Path]:
    return [p for p in TRAINABLES.rglob("*.py") if EDGE not in p.parents]


def test_the_layout_has_a_core_and_an_edge():
    assert len(core_modules()) > 20
    assert {p.name for p in EDGE.glob("*.py")} >= {"trial.py", "served_model.py"}


@pytest.mark.parametrize(
    ("paths", "forbidden"),
    [
        (lambda: list(TRAINABLES.rglob("*.py")), ("sweep", "analysis", "search_spaces", "tune")),
        (core_modules, ("ray", "mlflow", "trainables.edge")),
    ],
    ids=["trainables-below-sweep-and-analysis", "core-without-ray-mlflow-edge"],
)
def test_each_layer_imports_only_what_lies_below(paths, forbidden):
    assert offending(paths(), forbidden) == {}


def test_the_check_finds_a_forbidden_import(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    from trainables.edge.tracking import client\n")
    assert imported_modules(planted) >= {"trainables.edge.tracking"}
