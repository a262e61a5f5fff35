"""The plan of a sweep: everything the command line asked for (``sweep.options``), validated
into one frozen ``SweepPlan`` before Ray or MLflow is touched, so bad input leaves nothing
behind."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from search_spaces import (
    SearchSpace,
    SpaceContext,
    get_space,
)
from sweep.methods import SCHEDULERS, SEARCHERS, arm_grids
from sweep.options import GRACE_PERIOD, LISTS, METRICS, UsageError
from sweep.pins import check_pins, check_space_values, frozen_random_warning, parse_sets
from sweep.ray_address import LOCAL, running_cluster
from trainables.backbones import check_backbone
from trainables.contract import FROZEN_RANDOM_TAG
from trainables.data import (
    DEFAULT_FILE_IMAGE_SIZE,
    DataOptions,
    ImageData,
    limit_train,
    load_dataset,
    resolve_dataset,
    resplit_index,
)
from trainables.edge.tracking import absolute_tracking_uri, default_tracking_uri
from trainables.models import build_model, decode_size, get_backbone


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
    searcher: str = "tpe"  # --searcher: each arm's sampler (sweep.methods)
    scheduler: str = "asha"  # --scheduler: what may stop a search trial early
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # --searcher grid

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


def build_plan(args: argparse.Namespace) -> SweepPlan:
    """Every check that can fail on the user's input, in one place, before anything starts."""
    space, arms, metric = _space_arms_metric(args)
    grace_period = _check_run_options(args)
    fixed = {k: v for k, v in space.defaults.items() if k != "metric"}
    backbones, head = _backbones_and_head(args, fixed)
    weights = _weights_option(args.weights)
    dataset, data = _load_data(args, space, fixed, _file_decode_size(args, backbones, weights))
    for backbone in backbones:
        _check_weights(backbone, weights, data, head, args.image_size)
    context = SpaceContext(backbones, weights, data.multilabel, parse_sets(args.set or []))
    fixed.update(_trial_constants(args, space.name, dataset, weights, head, metric))
    surveys, warnings = check_pins(space, arms, context, reserved=set(fixed))
    check_space_values(surveys, data, head, context)
    grids = arm_grids(args.searcher, surveys, args.num_samples)
    split_seeds = confirmation_split_seeds(args.seed, args.confirm_splits)
    if args.confirm_seeds:
        for split_seed in split_seeds[1:]:  # the first is the data's own split
            resplit_index(data, split_seed)  # a class that a resplit cannot keep in val: now
    frozen_random = frozen_random_warning(surveys, context)
    warnings += [frozen_random] if frozen_random else []
    warnings += data.notes  # files the dataset skipped: the driver's stderr, --quiet or not
    plan = _assemble(args, space, arms, data, fixed, context, metric, grace_period)
    # Last: bad input is reported before this looks for a running Ray cluster.
    address, joins = _ray_address(args.address, args.num_cpus)
    return replace(
        plan,
        address=address,
        split_seeds=split_seeds,
        searcher=args.searcher,
        scheduler=args.scheduler,
        grids=grids,
        warnings=tuple(warnings + joins),
        parent_tags={FROZEN_RANDOM_TAG: frozen_random} if frozen_random else {},
    )


def load_plan_data(args: argparse.Namespace) -> tuple[str, ImageData]:
    """The dataset a sweep of ``args`` would train on, loaded as ``build_plan`` loads it
    (``--check-data``); nothing else is checked."""
    space, _, _ = _space_arms_metric(args)
    fixed = {k: v for k, v in space.defaults.items() if k != "metric"}
    backbones, _ = _backbones_and_head(args, fixed)
    weights = _weights_option(args.weights)
    return _load_data(args, space, fixed, _file_decode_size(args, backbones, weights))


def _space_arms_metric(args: argparse.Namespace) -> tuple[SearchSpace, tuple[str, ...], str]:
    if not args.space:
        raise UsageError("--space is required (or --list-spaces)")
    space = get_space(args.space)
    arms = tuple(a.strip() for a in args.arms.split(",")) if args.arms else space.arms
    space.check_arms(arms)
    metric = args.metric or space.defaults.get("metric", "val_macro_f1")
    METRICS.get(metric)  # an unknown one is refused, with the close names
    return space, arms, metric


def _check_run_options(args: argparse.Namespace) -> int:
    """The options checked on their own; returns the grace period."""
    if not 0 <= args.dropout < 1:
        raise UsageError(f"--dropout {args.dropout} is out of range; accepted: 0 <= dropout < 1")
    grace_period = _grace_period(args.grace_period, args.max_epochs)
    SEARCHERS.get(args.searcher)  # an unknown one is refused, with the close names
    SCHEDULERS.get(args.scheduler)
    _check_model_options(args.log_models, args.register_model)
    _check_resources(args.cpus_per_trial, args.gpus_per_trial)
    return grace_period


def _backbones_and_head(
    args: argparse.Namespace, fixed: dict[str, Any]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The backbones and head, from the command line or the space's defaults (taken out of
    ``fixed``, which gets the resolved values later)."""
    backbone_option = args.backbone or fixed.pop("backbone", "smallcnn")
    backbones = tuple(b.strip() for b in backbone_option.split(","))
    fixed.pop("backbone", None)
    for backbone in backbones:
        get_backbone(backbone)
    head = _parse_head(args.head if args.head is not None else fixed.pop("head_hidden", "128"))
    fixed.pop("head_hidden", None)
    return backbones, head


def _file_decode_size(args: argparse.Namespace, backbones: tuple[str, ...], weights: str) -> int:
    """Image files are decoded at the size the models take (``--image-size`` if given);
    datasets with a size of their own keep it unless ``--image-size`` says otherwise."""
    if args.image_size or not args.dataset:
        return args.image_size
    entry, _ = resolve_dataset(args.dataset)
    if not entry.takes_argument:  # not files named by a path: the dataset's own size
        return args.image_size
    return decode_size(backbones, weights, DEFAULT_FILE_IMAGE_SIZE)


def _load_data(
    args: argparse.Namespace, space: SearchSpace, fixed: dict[str, Any], image_size: int
) -> tuple[str, ImageData]:
    dataset = args.dataset or fixed.pop("dataset", "digits")
    fixed.pop("dataset", None)
    resolve_dataset(dataset)
    options = DataOptions(
        split_seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        image_size=image_size,
        data_root=args.data_root,
        download=args.download,
    )
    data = limit_train(load_dataset(dataset, options), args.train_limit, args.seed)
    if space.multilabel != data.multilabel:
        kind = "multi-label" if space.multilabel else "single-label"
        raise UsageError(f"space {space.name!r} needs {kind} data; {dataset!r} is not")
    return dataset, data


def _trial_constants(
    args: argparse.Namespace,
    space: str,
    dataset: str,
    weights: str,
    head: tuple[int, ...],
    metric: str,
) -> dict[str, Any]:
    """What every trial's config holds besides what the space searches."""
    return {
        "dataset": dataset,
        "weights": weights,
        "head_hidden": "-".join(map(str, head)),
        "dropout": args.dropout,
        "image_size": args.image_size,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "max_epochs": args.max_epochs,
        "split_seed": args.seed,
        "seed": args.seed,
        "metric": metric,
        "mode": METRICS.get(metric),
        "num_threads": max(1, int(args.cpus_per_trial)),
        "space": space,
        "role": "search",
        "feature_cache": not args.no_feature_cache,
    }


def _assemble(
    args: argparse.Namespace,
    space: SearchSpace,
    arms: tuple[str, ...],
    data: ImageData,
    fixed: dict[str, Any],
    context: SpaceContext,
    metric: str,
    grace_period: int,
) -> SweepPlan:
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
        mode=METRICS.get(metric),
        seed=args.seed,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent,
        max_failures=args.max_failures,
        address=args.address,
        num_cpus=args.num_cpus,
        storage_path=_storage_path(args.storage_path),
        experiment=args.experiment or space.name,
        tracking_uri=absolute_tracking_uri(args.tracking_uri or default_tracking_uri()),
        quiet=args.quiet,
        verbose=args.verbose,
        options=_options(args),
        log_models=args.log_models,
        register_model=args.register_model,
        optuna_storage=_optuna_storage(args.optuna_storage),
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
