"""The contract between the sweep and the analysis: one module, checked against its page."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import tables
from trainables import contract
from trainables.config import TrialConfig

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tracking.md"
LOWER_LAYER = "trainables"
UPPER_LAYERS = {"analysis", "sweep"}
SPLIT, KIND, CLASS, NAME, METRIC = "{split}", "{kind}", "{class}", "{name}", "{metric}"


def _imported_packages(tree: ast.AST) -> set[str]:
    """The top-level packages a module imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_trainables_imports_nothing_from_sweep_or_analysis():
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            _imported_packages(ast.parse(path.read_text())) & UPPER_LAYERS
        )
        for path in sorted((ROOT / LOWER_LAYER).rglob("*.py"))
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_the_import_scan_sees_lazy_imports():
    tree = ast.parse("def f():\n    from analysis.plots import x\n    import sweep.runner\n")
    assert _imported_packages(tree) == {"analysis", "sweep"}


def _doc_tables(text: str) -> dict[str, list[str]]:
    """First header cell -> the backticked name in the first cell of each row."""
    found: dict[str, list[str]] = {}
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells[0]
            found[header] = []
        elif not set(cells[0]) <= {"-", ":"}:
            found[header] += re.findall(r"`([^`]+)`", cells[0])[:1]
    return found


@pytest.fixture(scope="module")
def doc_tables() -> dict[str, list[str]]:
    return _doc_tables(DOC.read_text())


@pytest.fixture(scope="module")
def doc_names() -> set[str]:
    """Every backticked span of the page."""
    return set(re.findall(r"`([^`]+)`", DOC.read_text()))


def _constants(suffix: str) -> set[str]:
    return {
        value
        for name, value in vars(contract).items()
        if name.endswith(suffix) and name.isupper() and isinstance(value, str)
    }


def _module_tags() -> set[str]:
    return _constants("_TAG")


def _module_artifacts() -> set[str]:
    return _constants("_ARTIFACT") | {
        contract.confusion_csv(SPLIT),
        contract.confusion_png(SPLIT),
        f"{contract.REPORT_ARTIFACT_DIR}/{contract.REPORT_ARTIFACT_NAME}",
    }


def _module_metrics() -> set[str]:
    return {
        contract.split_metric(SPLIT, NAME),
        contract.class_metric(SPLIT, KIND, CLASS),
        contract.best_metric(METRIC),
        contract.BEST_EPOCH_METRIC,
        contract.ARM_METRIC,
        contract.COMPARISON_METRIC,
        contract.TRIALS_METRIC,
    }


@pytest.mark.parametrize(
    ("header", "module_names"),
    [("tag", _module_tags), ("artifact", _module_artifacts), ("metric", _module_metrics)],
)
def test_the_docs_tables_list_exactly_the_modules_names(doc_tables, header, module_names):
    documented = doc_tables[header]
    assert len(documented) == len(set(documented)), "a name is listed twice"
    assert set(documented) == module_names()


def test_the_values_of_the_contracts_tags_and_params_are_documented(doc_names):
    names = {
        *contract.OUTCOMES,
        *contract.ROLES,
        *contract.SPLITS,
        *contract.VERSION_TAGS,
        *contract.LOG_MODELS,
        *contract.BOOKKEEPING_PARAMS,
        *contract.SWEEP_FIXED_PARAMS,
        contract.MODEL_NAME,
        contract.EPOCH_COLUMN,
        contract.EMPTY_SEQUENCE,
        contract.FEATURE_CACHE_USED,
        contract.FEATURE_CACHE_UNCACHED_PREFIX,
    }
    assert sorted(names - doc_names) == []


def test_the_bookkeeping_params_are_config_fields_and_the_rest_are_hyperparameters():
    fields = set(TrialConfig().to_dict())
    assert fields >= contract.BOOKKEEPING_PARAMS
    assert fields >= contract.SWEEP_FIXED_PARAMS
    assert {"lr", "loss", "optimizer", "batch_size"}.isdisjoint(contract.BOOKKEEPING_PARAMS)


def test_the_table_parser_reads_first_cells_per_table():
    text = "| tag | x |\n|---|---|\n| `a` | `b` |\n\n| metric |\n|---|\n| `c` and `d` |\n"
    assert _doc_tables(text) == {"tag": ["a"], "metric": ["c"]}


@pytest.mark.parametrize("metric", ["val_macro_f1", "val_loss", "train_accuracy", "val_map"])
def test_best_metric_round_trips(metric):
    best = contract.best_metric(metric)
    assert best == f"best_{metric}"
    assert contract.is_best_metric(best) and not contract.is_best_metric(metric)
    assert contract.unbest(best) == metric
    assert contract.unbest(contract.BEST_EPOCH_METRIC) == "epoch"


@pytest.mark.parametrize("name", ["cat", "ant (rare)", "COVID-19", "a/b.c", "x?y"])
def test_class_metrics_round_trip_through_metric_safe(name):
    key = contract.metric_safe(name)
    metric = contract.class_metric(contract.VAL, "recall", key)
    assert metric.startswith("val_recall.")
    assert contract.class_key(metric) == key
    assert contract.metric_safe(key) == key  # cleaning twice changes nothing


@pytest.mark.parametrize("value", [(256, 128), (64,), 3e-4, 0.1, 1.5, 7, 0, "partial:2", True])
def test_params_round_trip_as_the_readers_read_them(value):
    text = contract.param_str(value)
    if isinstance(value, tuple):  # Optuna's and TrialConfig's spelling of a tuple
        assert TrialConfig.from_dict({"head_hidden": text}).head_hidden == value
    elif isinstance(value, bool):
        assert text == str(value)
    elif isinstance(value, int | float):  # what the analysis turns a param column into
        assert tables.typed(pd.Series([text])).iloc[0] == value
    else:
        assert text == value


def test_encoded_params_leave_out_none_and_keep_dicts_as_json():
    cfg = TrialConfig(loss="ce", head_hidden=(), gamma=None)
    encoded = contract.encode_params({**cfg.to_dict(), "extra": {"b": 1, "a": [2]}})
    assert "gamma" not in encoded
    assert encoded["head_hidden"] == contract.EMPTY_SEQUENCE
    assert json.loads(encoded["extra"]) == {"a": [2], "b": 1}
    assert all(isinstance(v, str) for v in encoded.values())
    assert set(encoded) == {k for k, v in cfg.to_dict().items() if v is not None} | {"extra"}
