"""Command line of ``tune.py``: parse, then validate everything into one frozen ``SweepPlan``
before Ray or MLflow is touched, so bad input leaves nothing behind."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from search_spaces import (
    ArmDefineByRun,
    ArmSurvey,
    PinError,
    SearchSpace,
    SpaceContext,
    Suggest,
    get_space,
    list_spaces,
    show_value,
)
from sweep.ray_address import LOCAL, running_cluster
from trainables.backbones import check_backbone
from trainables.contract import FROZEN_RANDOM_TAG, LOG_MODELS
from trainables.data import (
    DataOptions,
    ImageData,
    accepted_datasets,
    limit_train,
    load_dataset,
    resolve_dataset,
    resplit_index,
)
from trainables.errors import UserError
from trainables.losses import LossContext, build_loss, check_loss_fits, get_loss
from trainables.models import build_model, get_backbone, parse_freeze
from trainables.optim import get_optimizer
from trainables.tracking import absolute_tracking_uri, default_tracking_uri

METRICS = {
    "val_macro_f1": "max",
    "val_accuracy": "max",
    "val_balanced_accuracy": "max",
    "val_loss": "min",
    "val_map": "max",
}
GRACE_PERIOD = 2  # ASHA's epochs before a stop, unless --max-epochs is smaller
MAX_TEST_FRACTION = 0.5  # a test split larger than what is left to train on is a mistake
RESOURCE_UNIT = 0.0001  # the smallest amount of a resource Ray can schedule
CLASSIFIERS = ("softmax", "svm")  # TrialConfig.classifier
# Pinned strings outside a space's choices that _check_space_values checks against the
# project's registries; any other string must be one of the space's choices.
REGISTERED = {"loss", "optimizer", "freeze", "classifier"}
LISTS = ("list_spaces", "list_backbones")  # options that print and exit


class UsageError(UserError):
    """Bad input. Printed as one line; the command exits with status 2."""


@dataclass(frozen=True)
class SweepPlan:
    space: SearchSpace
    arms: tuple[str, ...]
    data: ImageData
    fixed: dict[str, Any]  # config values every trial shares
    context: SpaceContext
    num_samples: int
    confirm_seeds: tuple[int, ...]  # disjoint from the search's seed (confirmation_seeds)
    max_epochs: int
    grace_period: int
    metric: str
    mode: str
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_concurrent: int
    max_failures: int
    address: str | None
    num_cpus: int | None
    storage_path: str
    experiment: str
    tracking_uri: str
    quiet: bool
    verbose: bool = False  # Ray's own output besides the project's progress lines
    options: dict[str, Any] = field(default_factory=dict)  # as typed, logged on the parent run
    argv: tuple[str, ...] = ()  # the command line as typed: the resume command repeats it
    stamp: str = ""  # names the sweep's Ray Tune experiment
    parent_run_id: str | None = None  # set when resuming: the sweep to continue
    warnings: tuple[str, ...] = ()  # one line each, printed before the sweep starts
    parent_tags: dict[str, str] = field(default_factory=dict)  # e.g. FROZEN_RANDOM_TAG
    log_models: str = "confirmation"  # --log-models: whose runs log their trained model
    register_model: str | None = None  # --register-model: the registered model's name
    optuna_storage: str | None = None  # --optuna-storage: a database for the arms' studies
    # The train/val split seeds of the confirmation runs (--confirm-splits); the first is the
    # sweep's own split, on which the search ran.
    split_seeds: tuple[int, ...] = (0,)

    @property
    def model_roles(self) -> tuple[str, ...]:
        """The roles (``search``, ``confirmation``) whose trials log their model."""
        return {"none": (), "search": ("search", "confirmation")}.get(
            self.log_models, ("confirmation",)
        )

    @property
    def pins(self) -> Mapping[str, str]:
        """``--set KEY=VALUE`` as typed; they reach the trials inside the space context."""
        return self.context.pins


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
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset", help=f"default: the space's embedded default. Accepted: {accepted_datasets()}"
    )
    g.add_argument("--data-root", default="data", help="folder of torchvision's datasets")
    g.add_argument("--download", action="store_true", help="let torchvision download datasets")
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
    g = p.add_argument_group("model")
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
    g = p.add_argument_group("search")
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
    g = p.add_argument_group("resources")
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
    g = p.add_argument_group("tracking")
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
    return p


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


def build_plan(args: argparse.Namespace) -> SweepPlan:
    """Every check that can fail on the user's input, in one place, before anything starts."""
    if not args.space:
        raise UsageError("--space is required (or --list-spaces)")
    space = get_space(args.space)
    arms = tuple(a.strip() for a in args.arms.split(",")) if args.arms else space.arms
    space.check_arms(arms)
    metric = args.metric or space.defaults.get("metric", "val_macro_f1")
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; accepted: {', '.join(METRICS)}")
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout {args.dropout} is out of range; accepted: 0 <= dropout < 1")
    grace_period = _grace_period(args.grace_period, args.max_epochs)
    _check_model_options(args.log_models, args.register_model)
    _check_resources(args.cpus_per_trial, args.gpus_per_trial)
    fixed = {k: v for k, v in space.defaults.items() if k != "metric"}
    backbone_option = args.backbone or fixed.pop("backbone", "smallcnn")
    backbones = tuple(b.strip() for b in backbone_option.split(","))
    fixed.pop("backbone", None)
    for backbone in backbones:
        get_backbone(backbone)
    head = _parse_head(args.head if args.head is not None else fixed.pop("head_hidden", "128"))
    fixed.pop("head_hidden", None)
    dataset = args.dataset or fixed.pop("dataset", "digits")
    fixed.pop("dataset", None)
    resolve_dataset(dataset)
    data = load_dataset(
        dataset,
        DataOptions(
            split_seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            image_size=args.image_size,
            data_root=args.data_root,
            download=args.download,
        ),
    )
    data = limit_train(data, args.train_limit, args.seed)
    if space.multilabel != data.multilabel:
        kind = "multi-label" if space.multilabel else "single-label"
        raise UsageError(f"space {space.name!r} needs {kind} data; {dataset!r} is not")
    weights = _weights_option(args.weights)
    for backbone in backbones:
        _check_weights(backbone, weights, data, head, args.image_size)
    context = SpaceContext(backbones, weights, data.multilabel, _parse_sets(args.set or []))
    cpus = max(1, int(args.cpus_per_trial))
    fixed.update(
        dataset=dataset,
        weights=weights,
        head_hidden="-".join(map(str, head)),
        dropout=args.dropout,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        max_epochs=args.max_epochs,
        split_seed=args.seed,
        seed=args.seed,
        metric=metric,
        mode=METRICS[metric],
        num_threads=cpus,
        space=space.name,
        role="search",
        feature_cache=not args.no_feature_cache,
    )
    surveys, warnings = _check_pins(space, arms, context, reserved=set(fixed))
    _check_space_values(surveys, data, head, context)
    split_seeds = confirmation_split_seeds(args.seed, args.confirm_splits)
    if args.confirm_seeds:
        for split_seed in split_seeds[1:]:  # the first is the data's own split
            resplit_index(data, split_seed)  # a class that a resplit cannot keep in val: now
    frozen_random = _frozen_random(surveys, context)
    warnings += [frozen_random] if frozen_random else []
    warnings += data.notes  # files the dataset skipped: the driver's stderr, --quiet or not
    # Last: bad input is reported before this looks for a running Ray cluster.
    address, joins = _ray_address(args.address, args.num_cpus)
    warnings += joins
    return SweepPlan(
        space=space,
        arms=arms,
        data=data,
        fixed=fixed,
        context=context,
        num_samples=args.num_samples,
        confirm_seeds=confirmation_seeds(args.seed, args.confirm_seeds),
        max_epochs=args.max_epochs,
        grace_period=grace_period,
        metric=metric,
        mode=METRICS[metric],
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        address=address,
        num_cpus=args.num_cpus,
        storage_path=_storage_path(args.storage_path),
        experiment=args.experiment or space.name,
        tracking_uri=absolute_tracking_uri(args.tracking_uri or default_tracking_uri()),
        quiet=args.quiet,
        verbose=args.verbose,
        options=_options(args),
        warnings=tuple(warnings),
        parent_tags={FROZEN_RANDOM_TAG: frozen_random} if frozen_random else {},
        log_models=args.log_models,
        register_model=args.register_model,
        optuna_storage=_optuna_storage(args.optuna_storage),
        split_seeds=split_seeds,
    )


def confirmation_seeds(search_seed: int, count: int) -> tuple[int, ...]:
    """The ``count`` seeds after the search's. Every search trial runs on ``search_seed``
    (``search_spaces.ArmDefineByRun`` puts it in every config, and no space may set it), so no
    confirmation run repeats the initial weights and batch order of the trial that won."""
    return tuple(search_seed + 1 + i for i in range(count))


def confirmation_split_seeds(split_seed: int, count: int) -> tuple[int, ...]:
    """The sweep's own train/val split, then ``count - 1`` others (``trainables.data.resplit``
    of the same train and val images; the test split is the same for all)."""
    return tuple(split_seed + i for i in range(count))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The options as typed, for the parent run; ``--set`` as one readable param."""
    options = {k: v for k, v in vars(args).items() if v is not None and k not in LISTS}
    if args.set:
        options["set"] = ", ".join(args.set)
    return options


def _optuna_storage(url: str | None) -> str | None:
    """A database URL SQLAlchemy can parse and has a driver for; connected to only at the end."""
    if url is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(url).get_dialect()
    except (ArgumentError, NoSuchModuleError, ImportError) as err:
        raise UsageError(
            f"--optuna-storage {url!r} is not a database URL SQLAlchemy can use ({err}); "
            "e.g. sqlite:///optuna.db"
        ) from None
    return url


def _grace_period(grace_period: int | None, max_epochs: int) -> int:
    """The default follows --max-epochs; only a grace period the user typed can contradict it."""
    if grace_period is None:
        return min(GRACE_PERIOD, max_epochs)
    if grace_period > max_epochs:
        raise UsageError(f"--grace-period {grace_period} exceeds --max-epochs {max_epochs}")
    return grace_period


def _check_model_options(log_models: str, name: str | None) -> None:
    """A name ``models:/NAME/VERSION`` can carry, and a model to register."""
    if name is None:
        return
    if not name.strip() or any(c in name for c in "/:") or name != name.strip():
        raise UsageError(
            f"bad --register-model {name!r}; accepted: a name without '/', ':' or surrounding "
            "spaces, e.g. xray-classifier"
        )
    if log_models == "none":
        raise UsageError(
            "--register-model with --log-models none: no run logs a model to register; "
            "accepted: --log-models confirmation or search"
        )


def _check_resources(cpus: float, gpus: float) -> None:
    """Ray cannot place a trial that asks for nothing; without this it fails inside the
    Tuner, after the MLflow experiment and parent run exist."""
    if cpus == 0 and gpus == 0:
        raise UsageError(
            "--cpus-per-trial 0 with --gpus-per-trial 0: a trial must ask for some CPU or some "
            "GPU; accepted: --cpus-per-trial above 0, or --gpus-per-trial above 0"
        )


def _ray_address(address: str | None, num_cpus: int | None) -> tuple[str | None, list[str]]:
    """``--address``; else the running cluster ``ray.init()`` would join, said in one line (or
    None: a Ray of the sweep's own). Checked, not left to ``ray.init``, which refuses a local
    Ray's settings for a cluster it finds, and waits forever for one that has stopped."""
    if address is not None:
        return address, []
    found = running_cluster()
    if found is None:
        return None, []
    if num_cpus is not None:
        raise UsageError(
            f"--num-cpus sizes a Ray of the sweep's own, but {found.where}, which the sweep "
            f"would run on; leave --num-cpus out, or pass --address {LOCAL} (or `ray stop` it)"
        )
    return found.address, [found.notice()]


def _weights_option(weights: str) -> str:
    """A weights file as an absolute path: trials run in folders of their own (and on other
    nodes, where the same path must exist)."""
    if weights in {"imagenet", "none"}:
        return weights
    if not os.path.isfile(os.path.expanduser(weights)):
        raise UsageError(
            f"weights file {weights!r} does not exist; accepted: imagenet, none, or a path to a "
            "state-dict file"
        )
    return str(Path(weights).expanduser().resolve())


def _storage_path(path: str) -> str:
    """A URI (``s3://``, ``gs://``) as given, which multi-node clusters need; a local path
    made absolute."""
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _parse_head(text: str | tuple) -> tuple[int, ...]:
    if isinstance(text, tuple):
        return text
    if text in {"", "none"}:
        return ()
    try:
        sizes = tuple(int(v) for v in str(text).split("-"))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UsageError(
            f"bad --head {text!r}; accepted: sizes joined by '-', e.g. 512-256, or none"
        )
    return sizes


def _check_weights(
    backbone: str, weights: str, data: ImageData, head: tuple[int, ...], image_size: int
) -> None:
    """Pretrained weights exist and the input size fits; a local weights file is loaded once
    here, so a bad one fails before any trial."""
    check_backbone(backbone, weights=weights, image_size=image_size)
    if weights not in {"imagenet", "none"} and not os.path.isfile(weights):
        raise UsageError(
            f"weights file {weights!r} does not exist; accepted: imagenet, none, or a path to a "
            "state-dict file"
        )
    if weights not in {"imagenet", "none"}:
        build_model(
            backbone=backbone,
            weights=weights,
            num_classes=data.num_classes,
            in_channels=data.channels,
            data_size=data.image_size,
            head_hidden=head,
        )


def _parse_sets(texts: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` options as typed; their types come from the space (_pins.coerce)."""
    pins: dict[str, str] = {}
    for text in texts:
        key, equals, value = (part.strip() for part in text.partition("="))
        if not equals or not key or not value:
            raise UsageError(f"bad --set {text!r}; accepted: KEY=VALUE, e.g. --set lr=1e-4")
        if key in pins:
            raise UsageError(f"--set {key} is given twice; accepted: each key once")
        pins[key] = value
    return pins


def _check_pins(
    space: SearchSpace, arms: tuple[str, ...], context: SpaceContext, *, reserved: set[str]
) -> tuple[dict[str, ArmSurvey], list[str]]:
    """Survey every arm with the pins in place (for _check_space_values); refuse a pin no arm
    can take, and warn of one only some arms have or outside what the space searches."""
    if not context.pins:
        return _survey(space, arms, context), []
    free = _survey(space, arms, replace(context, pins={}))
    keys = set().union(*(s.keys for s in free.values())) - {space.factor}
    for key in context.pins:
        _check_pin_key(key, space, arms, keys, reserved)
    surveys = _survey(space, arms, context)
    warnings = [
        warning
        for key, text in context.pins.items()
        for warning in _pin_warnings(key, text, arms, surveys)
    ]
    return surveys, warnings


def _survey(
    space: SearchSpace, arms: tuple[str, ...], context: SpaceContext
) -> dict[str, ArmSurvey]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return {arm: ArmDefineByRun(space, arm, context, {}).survey() for arm in arms}
    except PinError as err:
        raise UsageError(f"--set {err}") from None


def _check_pin_key(
    key: str, space: SearchSpace, arms: tuple[str, ...], keys: set[str], reserved: set[str]
) -> None:
    if key == space.factor:
        raise UsageError(
            f"--set {key}: {key} is what the arms of space {space.name!r} differ in; pick "
            f"arms with --arms (accepted: {', '.join(space.choices)})"
        )
    if key not in keys:
        what = (
            f"{key} is fixed for the whole sweep (an option of its own, or bookkeeping)"
            if key in reserved or key == "backbone"
            else f"no arm searched ({', '.join(arms)}) of space {space.name!r} has {key}"
        )
        raise UsageError(f"--set {key}: {what}; accepted: {', '.join(sorted(keys))}")


def _pin_warnings(
    key: str, text: str, arms: tuple[str, ...], surveys: dict[str, ArmSurvey]
) -> list[str]:
    """A pin some arms lack, or outside the range or choices an arm searches: allowed (the
    seed reports used lr 1e-4, below the focal space's range), but said."""
    used = [arm for arm in arms if key in surveys[arm].pinned]
    if not used:  # other pins took the branch that asks for it away
        raise UsageError(f"--set {key}={text} applies to no arm, given the other --set values")
    warnings = []
    if len(used) < len(arms):
        lacking = [arm for arm in arms if arm not in used]
        warnings.append(
            f"{key}={text} applies only to arm{'s' * (len(used) > 1)} {', '.join(used)}; "
            f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no {key}"
        )
    outside: dict[tuple[str, Suggest], list[str]] = {}
    for arm in used:
        value = surveys[arm].pinned[key]
        for suggest in surveys[arm].suggests.get(key, ()):
            if not suggest.contains(value):
                _check_outside(key, text, value, suggest)
                outside.setdefault((show_value(value), suggest), []).append(arm)
    for (value, suggest), where in outside.items():
        everywhere = len(outside) == 1 and len(where) == len(used)
        warnings.append(
            f"{key}={value} is {'outside' if suggest.kind != 'categorical' else 'not among'} "
            f"the space's {suggest.describe()}"
            + ("" if everywhere else f" (arm{'s' * (len(where) > 1)} {', '.join(where)})")
        )
    return warnings


def _check_outside(key: str, text: str, value: Any, suggest: Suggest) -> None:
    """Refuse what can only fail in every trial: a negative number where the space searches
    none, a count below 1 where it searches counts (batch size 0), or a string choice no
    registry of ours checks. Zero stays a number like any other (focal gamma 0 is CE)."""
    lowest = _lowest(suggest)
    if lowest is None:
        if key not in REGISTERED:
            accepted = ", ".join(map(show_value, suggest.choices))
            raise UsageError(f"--set {key}={text}: accepted: {accepted}")
        return
    counts = suggest.kind != "float" and isinstance(lowest, int)
    floor = 1 if counts and lowest >= 1 else 0 if lowest >= 0 else None
    if floor is not None and value < floor:
        raise UsageError(
            f"--set {key}={text}: {key} must be {floor} or more (the space searches the "
            f"{suggest.describe()})"
        )


def _lowest(suggest: Suggest) -> float | None:
    """The smallest number the space searches; None for choices that are not all numbers."""
    if suggest.kind != "categorical":
        return suggest.low
    numbers = [c for c in suggest.choices if isinstance(c, int | float) and not isinstance(c, bool)]
    return min(numbers) if numbers and len(numbers) == len(suggest.choices) else None


def _check_space_values(
    surveys: dict[str, ArmSurvey], data: ImageData, head: tuple[int, ...], context: SpaceContext
) -> None:
    """Check every value each arm's dry runs produced, a pin in place of what it replaces:
    optimizers and classifiers exist, losses fit the data and head, freeze specs fit the
    backbones."""
    pins = context.pins
    for arm, survey in surveys.items():
        options = _arm_options(survey)
        with _blame_pin(pins, "optimizer"):
            for optimizer in options.get("optimizer", ()):
                get_optimizer(optimizer)
        with _blame_pin(pins, "classifier"):
            for classifier in options.get("classifier", ()):
                if classifier not in CLASSIFIERS:
                    raise UsageError(
                        f"unknown classifier {classifier!r}; accepted: {', '.join(CLASSIFIERS)}"
                    )
        for loss in options.get("loss", ()):
            with _blame_pin(pins, "loss"):
                entry = get_loss(loss)
                check_loss_fits(entry, multilabel=data.multilabel, embedding_dim=len(head))
                # Built once: a loss pinned into an arm that searches none of its settings
                # (--space svm --set loss=focal: no gamma) would fail in every trial.
                build_loss(loss, _loss_context(options, data, head))
            if not entry.trains_head and "svm" not in options.get("classifier", []):
                with _blame_pin(pins, "classifier", "loss"):
                    raise UsageError(
                        f"arm {arm!r}: loss {loss!r} trains no head; pair it with classifier 'svm'"
                    )
        with _blame_pin(pins, "freeze"):
            for bb in options.get("backbone", context.backbones):
                get_backbone(bb)
                for freeze in options.get("freeze", []):
                    parse_freeze(freeze, bb)


def _frozen_random(surveys: dict[str, ArmSurvey], context: SpaceContext) -> str | None:
    """One line when arms freeze layers of a randomly initialised backbone: an arm whose every
    trial freezes some (a constant or pinned freeze), or whose search may freeze it all. Their
    frozen features stay random, so the comparison says little; it is allowed, and said."""
    if context.pretrained:
        return None
    arms = [arm for arm, survey in surveys.items() if _freezes(survey)]
    if not arms:
        return None
    return (
        f"arm{'s' * (len(arms) > 1)} {', '.join(arms)} freeze{'s' * (len(arms) == 1)} layers of "
        f"a randomly initialised {'/'.join(context.backbones)} (--weights none): their features "
        "stay random, so this measures little of use; --weights imagenet or a weights file "
        "makes it meaningful"
    )


def _freezes(survey: ArmSurvey) -> bool:
    fixed = set(survey.constants.get("freeze", set()))
    if "freeze" in survey.pinned:
        fixed = {survey.pinned["freeze"]}
    searched = {c for s in survey.suggests.get("freeze", ()) for c in s.choices}
    return bool(fixed - {"none"}) or ("freeze" not in survey.pinned and "backbone" in searched)


def _loss_context(options: dict[str, list[Any]], data: ImageData, head: tuple[int, ...]):
    def first(name: str) -> Any:
        return options.get(name, [None])[0]

    return LossContext(
        num_classes=data.num_classes,
        embedding_dim=head[-1] if head else 0,
        class_counts=data.class_counts("train").tolist(),
        multilabel=data.multilabel,
        gamma=first("gamma"),
        margin=first("margin"),
        mining=first("mining"),
        center_lambda=first("center_lambda"),
    )


def _arm_options(survey: ArmSurvey) -> dict[str, list[Any]]:
    """Every categorical value and constant an arm can produce (and the low end of each
    number it searches); a pin replaces them."""
    options: dict[str, set[Any]] = {}
    for name, suggests in survey.suggests.items():
        for suggest in suggests:
            values = suggest.choices if suggest.kind == "categorical" else (suggest.low,)
            options.setdefault(name, set()).update(values)
    for name, values in survey.constants.items():
        options.setdefault(name, set()).update(values)
    options.update({name: {value} for name, value in survey.pinned.items()})
    return {name: sorted(values, key=str) for name, values in options.items()}


@contextlib.contextmanager
def _blame_pin(pins: Mapping[str, str], *keys: str) -> Iterator[None]:
    """A bad value under a pinned key is the pin's fault: name the first pinned one as typed."""
    try:
        yield
    except UserError as err:
        key = next((k for k in keys if k in pins), None)
        if key is None:
            raise
        raise UsageError(f"--set {key}={pins[key]}: {err}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return get_args_parser().parse_args(argv)
