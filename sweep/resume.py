"""``tune.py --resume [RUN]``: find the sweep to continue and rebuild its command line.

The sweep's own options come from its parent run (the command line as typed, a tag); options
given again must agree with them, except those that say how to run rather than what
(``EXEMPT``). Finding nothing to resume, a sweep that finished, or one whose driver still
runs (``sweep.lease``) is a usage error."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from sweep.lease import refuse_if_held
from sweep.options import UsageError, get_args_parser
from trainables import contract
from trainables.edge import tracking

LATEST = "latest"
SWEEPS_PER_PAGE = 200  # sweep parent runs read at a time while looking for one by name
# Options that may differ on resume: where and how the sweep runs, not what it searches
# (what the callbacks take from them follows the resuming command: ``callbacks.resumed_with``).
# How, but kept by Ray Tune with the experiment (its TuneConfig and each trial's retries):
# ``Tuner.restore`` takes no other value, so one given again must agree.
KEPT_BY_RAY = frozenset({"max_concurrent", "max_failures"})
EXEMPT = frozenset(
    {
        "resume",
        "quiet",
        "verbose",
        "address",
        "num_cpus",
        "tracking_uri",
        "storage_path",
        "data_root",
        "download",
    }
)


@dataclass(frozen=True)
class ResumePoint:
    args: argparse.Namespace  # the sweep's options, with the exempt ones given now
    argv: tuple[str, ...]  # the sweep's command line as first typed
    parent_run_id: str
    stamp: str
    storage_path: str | None  # from the parent run, unless --storage-path is given now


def locate(args: argparse.Namespace, argv: list[str]) -> ResumePoint:
    """The sweep ``args.resume`` names (``latest``: the experiment's newest sweep)."""
    uri = tracking.absolute_tracking_uri(args.tracking_uri or tracking.default_tracking_uri())
    run = _find_parent(uri, args)
    tags = run.data.tags
    if run.info.status == "FINISHED":
        raise UsageError(
            f"sweep {run.info.run_name} (run {run.info.run_id}) has finished; nothing to resume"
        )
    refuse_if_held(run)  # its driver still runs: refused before Ray starts or anything is written
    if contract.ARGV_TAG not in tags:
        raise UsageError(
            f"run {run.info.run_id} was not written by a version of tune.py that can resume it"
        )
    logged_argv = json.loads(tags[contract.ARGV_TAG])
    given = _explicit(argv)
    logged = get_args_parser().parse_args(logged_argv)
    _check_agree(given, logged)
    for key in EXEMPT & set(given):
        setattr(logged, key, given[key])
    logged.resume = None
    return ResumePoint(
        args=logged,
        argv=tuple(logged_argv),
        parent_run_id=run.info.run_id,
        stamp=tags[contract.STAMP_TAG],
        storage_path=None if "storage_path" in given else tags.get(contract.STORAGE_TAG),
    )


def refuse_two_experiments(storage_path: str, space: str, stamp: str) -> None:
    """Sweeps used to run their phases as two Ray Tune experiments (``<space>-search-<stamp>``,
    then ``-confirm-``); this version keeps one, cannot continue those, and would start the
    sweep over beside them."""
    old = [f"{storage_path.rstrip('/')}/{space}-{phase}-{stamp}" for phase in ("search", "confirm")]
    found = [path for path in old if _is_folder(path)]
    if found:
        raise UsageError(
            f"the sweep at {found[0]} ran as two Ray Tune experiments, one per phase; this "
            "version runs a sweep as one and cannot resume it (the version that started it can)"
        )


def _is_folder(path: str) -> bool:
    if "://" not in path:
        return Path(path).is_dir()
    import pyarrow.fs

    try:
        fs, where = pyarrow.fs.FileSystem.from_uri(path)
        return fs.get_file_info(where).type == pyarrow.fs.FileType.Directory
    except (OSError, ValueError):  # storage Ray itself will report on, if it cannot reach it
        return False


def resume_command(argv: tuple[str, ...], parent_run_id: str) -> str:
    """The exact command that continues this sweep."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "tune.py"
    return f"python {shlex.join([script, *argv, '--resume', parent_run_id])}"


def _find_parent(uri: str, args: argparse.Namespace):
    from mlflow.exceptions import MlflowException

    _refuse_missing_store(uri)
    client = tracking.client(uri)
    ref = args.resume
    if ref != LATEST:
        try:
            run = client.get_run(ref)
        except MlflowException:
            run = None
        if run is not None:
            return _sweep_run(run, ref)
    experiment_name = args.experiment or args.space
    if not experiment_name:
        raise UsageError("--resume needs --space or --experiment, or a parent run id")
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UsageError(f"no experiment {experiment_name!r} in {uri}; nothing to resume")
    run = _newest_sweep(client, experiment.experiment_id, None if ref == LATEST else ref)
    if run is None:
        what = "no sweep" if ref == LATEST else f"no sweep run with id or name {ref!r}"
        raise UsageError(f"{what} in experiment {experiment_name!r}; nothing to resume")
    return run


def _refuse_missing_store(uri: str) -> None:
    """MLflow creates a local store it is asked to open: a ``--resume`` run in the wrong folder
    (or given the wrong ``--tracking-uri``) would leave an empty store behind."""
    path = _local_store(uri)
    if path is not None and not path.exists():
        raise UsageError(
            f"no MLflow store at {path}; nothing to resume (run this where the sweep ran, or "
            "pass the --tracking-uri it used)"
        )


def _local_store(uri: str) -> Path | None:
    """The file or folder of a local store (``absolute_tracking_uri``'s forms); None for a
    server or a database elsewhere."""
    if tracking.is_local_sqlite(uri):
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(urlparse(uri).path)
    return None if "://" in uri or uri.startswith("databricks") else Path(uri)


def _newest_sweep(client, experiment_id: str, name: str | None):
    """The experiment's newest sweep, or its newest one named ``name``; None if none. Names
    are compared here, not in MLflow's filter, whose parser has no escape for a quote: a name
    such as ``a'b`` made it raise."""
    query = f"tags.{contract.ROLE_TAG} = '{contract.SWEEP_ROLE}'"
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            query,
            order_by=["attributes.start_time DESC"],
            max_results=1 if name is None else SWEEPS_PER_PAGE,
            page_token=token,
        )
        found = next((r for r in page if name is None or r.info.run_name == name), None)
        if found is not None or not page.token:
            return found
        token = page.token


def _sweep_run(run, ref: str):
    if run.data.tags.get(contract.ROLE_TAG) != contract.SWEEP_ROLE:
        raise UsageError(f"run {ref} is not a sweep's parent run (tag role=sweep)")
    return run


def _explicit(argv: list[str]) -> dict[str, object]:
    """The options typed on this command line, without the parser's defaults."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def _check_agree(given: dict[str, object], logged: argparse.Namespace) -> None:
    for key, value in sorted(given.items()):
        if key in EXEMPT or getattr(logged, key, None) == value:
            continue
        option = "--" + key.replace("_", "-")
        before = getattr(logged, key, None)
        why = ": Ray Tune keeps it with the experiment" if key in KEPT_BY_RAY else ""
        raise UsageError(
            f"{option} {_shown(value)} differs from the interrupted sweep's {_shown(before)}"
            f"{why}; leave it out or give the same value"
        )


def _shown(value: object) -> str:
    return "(not set)" if value is None else str(value)
