"""The command line of ``tune.py``: the parser in argument groups, the option types, and the
one-line refusal of bad input (exit status 2). ``sweep.plan`` turns what it parses into a plan."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from search_spaces import list_spaces
from trainables.contract import LOG_MODELS
from trainables.data import accepted_datasets
from trainables.errors import UserError
from trainables.registry import Registry

GRACE_PERIOD = 2  # ASHA's epochs before a stop, unless --max-epochs is smaller
MAX_TEST_FRACTION = 0.5  # a test split larger than what is left to train on is a mistake
RESOURCE_UNIT = 0.0001  # the smallest amount of a resource Ray can schedule
LISTS = ("list_spaces", "list_backbones")  # options that print and exit


class UsageError(UserError):
    """Bad input. Printed as one line; the command exits with status 2."""


# The metrics a sweep can optimise, and which way.
METRICS: Registry[str] = Registry("metric", UsageError)
for _name, _mode in (
    ("val_macro_f1", "max"),
    ("val_accuracy", "max"),
    ("val_balanced_accuracy", "max"),
    ("val_loss", "min"),
    ("val_map", "max"),
):
    METRICS.register(_name, _mode)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def _resource(text: str) -> float:
    value = _number(text, float)
    # Ray counts resources in units of 0.0001 and refuses a smaller fraction (it fails
    # after the sweep has started), and a fraction above one is not a Ray amount at all.
    if value < 0 or 0 < value < RESOURCE_UNIT or (value > 1 and value != int(value)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid amount: 0, a fraction from {RESOURCE_UNIT} to 1, or a "
            "whole number"
        )
    return value


def _fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction strictly between 0 and 1")
    return value


def _test_fraction(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < MAX_TEST_FRACTION:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range; accepted: a fraction strictly between 0 and "
            f"{MAX_TEST_FRACTION}"
        )
    return value


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def get_args_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tune.py",
        description="Search the hyperparameters of image-classifier fine-tuning with Ray Tune "
        "and Optuna; every trial is an MLflow run nested under one run per sweep. Each arm of "
        "the space gets the same budget, then each arm's best config is re-run on several "
        "seeds, paired across arms, for `python -m analysis compare`.",
    )
    p.add_argument("--space", help="search space name (see --list-spaces)")
    p.add_argument("--list-spaces", action="store_true", help="list the spaces and exit")
    p.add_argument("--arms", help="comma-separated arms to compare (default: the space's)")
    _add_data_options(p.add_argument_group("data"))
    _add_model_options(p.add_argument_group("model"))
    _add_search_options(p.add_argument_group("search"))
    _add_resources_options(p.add_argument_group("resources"))
    tracking = p.add_argument_group("tracking")
    _add_tracking_options(tracking)
    _add_run_options(tracking)
    return p


def _add_data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--dataset", help=f"default: the space's embedded default. Accepted: {accepted_datasets()}"
    )
    g.add_argument("--data-root", default="data", help="folder of torchvision's datasets")
    g.add_argument("--download", action="store_true", help="let torchvision download datasets")
    g.add_argument(
        "--check-data",
        action="store_true",
        help="load the dataset (decode it or open its image cache), print its classes per split, "
        "skipped files, decoded size and cache, and exit without starting Ray",
    )
    g.add_argument(
        "--test-fraction",
        type=_test_fraction,
        default=0.2,
        help="share of the images held out as the test split, stratified and fixed by --seed, "
        "carved before val; only confirmation runs are scored on it, at the epoch val chose. "
        "torchvision's datasets use their own test split (default 0.2)",
    )
    g.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.25,
        help="share of the images outside the test split that go to val (default 0.25)",
    )
    g.add_argument(
        "--train-limit",
        type=_non_negative_int,
        default=0,
        help="use at most N training images, drawn stratified (a quick smoke run); 0 = all",
    )
    g.add_argument(
        "--image-size",
        type=_non_negative_int,
        default=0,
        help="model input size; 0 = the weights' size, else the data's (default 0)",
    )


def _add_model_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--backbone",
        default=None,
        help="smallcnn, a torchvision classification model (resnet18, efficientnet_b0, "
        "convnext_tiny, vit_b_16, ...) or timm:NAME with the timm extra; see --list-backbones. "
        "Several, comma-separated, are searched (default: the space's, else smallcnn; spaces "
        "whose arms are backbones ignore it)",
    )
    g.add_argument("--list-backbones", action="store_true", help="list the backbone names and exit")
    g.add_argument(
        "--weights",
        default="none",
        help="imagenet (the backbone's own pretrained weights, downloaded once), none, or a "
        "local weights file (.pt, .pth or .safetensors)",
    )
    g.add_argument("--head", default=None, help="head hidden sizes, e.g. 512-256 (default 128)")
    g.add_argument("--dropout", type=float, default=0.0)


def _add_search_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--num-samples", type=_positive_int, default=4, help="trials per arm (4)")
    g.add_argument("--max-epochs", type=_positive_int, default=6, help="epochs per trial (6)")
    g.add_argument(
        "--grace-period",
        type=_positive_int,
        default=None,
        help=f"ASHA: epochs before a trial may be stopped (default {GRACE_PERIOD}, or "
        "--max-epochs when fewer)",
    )
    g.add_argument(
        "--searcher",
        default="tpe",
        help="each arm's sampler: tpe (Optuna's TPE after a random start), random, or grid "
        "(every combination; all searched values must be choices) (tpe)",
    )
    g.add_argument(
        "--scheduler",
        default="asha",
        help="asha (stop unpromising trials early) or none (every trial to --max-epochs) (asha)",
    )
    g.add_argument(
        "--confirm-seeds",
        type=_non_negative_int,
        default=5,
        help="seeds each arm's best config is re-run on, paired across arms; none of them is "
        "the search's seed; 0 skips (5)",
    )
    g.add_argument(
        "--confirm-splits",
        type=_positive_int,
        default=1,
        help="repeat the confirmation runs on K train/val splits (the sweep's own and K-1 "
        "others drawn by seeds after --seed; the test split stays), paired by split and seed, "
        "so the comparison's intervals include which images landed in val (1)",
    )
    g.add_argument(
        "--metric",
        default=None,
        help=f"one of {', '.join(METRICS)} (default: val_macro_f1, val_map for multi-label spaces)",
    )
    g.add_argument("--seed", type=_non_negative_int, default=0, help="split and sampler seed")
    g.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="pin a hyperparameter of the space in every trial of every arm, e.g. --set lr=1e-4 "
        "(repeatable); it is no longer searched. Numbers outside the space's range and keys "
        "only some arms have are allowed, with a warning",
    )


def _add_resources_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cpus-per-trial", type=_resource, default=1.0)
    g.add_argument("--gpus-per-trial", type=_resource, default=0.0, help="fractions allowed")
    g.add_argument(
        "--max-concurrent",
        type=_non_negative_int,
        default=0,
        help="trials at once; 0 = as many as resources allow",
    )
    g.add_argument(
        "--max-failures",
        type=_non_negative_int,
        default=1,
        help="retries of a failed trial, from its last checkpoint (1)",
    )
    g.add_argument(
        "--no-feature-cache",
        action="store_true",
        help="run a frozen backbone in every epoch of every trial, not once per node and "
        "input (the same results, slower; for comparison)",
    )
    g.add_argument("--address", default=None, help="a running Ray cluster, e.g. auto")
    g.add_argument("--num-cpus", type=_positive_int, default=None, help="local Ray only")
    g.add_argument("--storage-path", default="ray_results", help="Ray Tune's results folder")


def _add_tracking_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--experiment", default=None, help="MLflow experiment (default: the space)")
    g.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    g.add_argument(
        "--log-models",
        choices=LOG_MODELS,
        default="confirmation",
        help="whose runs log their model at the best epoch: confirmation runs (default), "
        "search trials too (search; those ASHA stopped early log none), or none. Without "
        "confirmation runs, each arm's best search trial logs one after the sweep",
    )
    g.add_argument(
        "--register-model",
        metavar="NAME",
        help="register the winning model (the best arm by the mean of its confirmation runs, "
        "its best seed) in the MLflow Model Registry as NAME",
    )
    g.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="also save each arm's Optuna study in this database (an SQLAlchemy URL such as "
        "sqlite:///optuna.db or postgresql://...), for optuna-dashboard; the studies are always "
        "logged with the parent run as an Optuna journal file",
    )


def _add_run_options(g: argparse._ArgumentGroup) -> None:
    """Output and --resume: in the tracking group of --help."""
    g.add_argument(
        "--quiet",
        action="store_true",
        help="only the summary (and warnings): no progress view while the sweep runs",
    )
    g.add_argument(
        "--verbose",
        action="store_true",
        help="Ray Tune's own output too: its status tables, trial boxes and workers' logs "
        "(the progress then prints plain lines, not a view redrawn in place)",
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN",
        help="continue an interrupted sweep: the experiment's latest, or the one whose parent "
        "run id or name is RUN; options given again must agree with the sweep's",
    )


def fail(message: str) -> NoReturn:
    print(f"tune.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def list_spaces_text() -> str:
    width = max(len(s.name) for s in list_spaces())
    lines = [
        f"{s.name:<{width}}  {s.description}  [{s.factor}: {', '.join(s.arms)}]"
        for s in list_spaces()
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return get_args_parser().parse_args(argv)
