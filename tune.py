"""Search the hyperparameters of image-classifier fine-tuning: `python tune.py --space focal`.

Parses and validates the command line (bad input: one line, exit status 2, nothing written),
runs the sweep on Ray Tune with Optuna and ASHA, and prints the best config of each arm.
`--resume` continues an interrupted sweep; Ctrl-C stops one cleanly and prints how.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, NoReturn

from sweep.local_ray import LocalRay, options_from_argv
from trainables.errors import UserError

if TYPE_CHECKING:
    from sweep.plan import SweepPlan

EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C


def main(argv: list[str] | None = None, early_ray: LocalRay | None = None) -> int:
    """``early_ray``: a local Ray started before this module's imports (``sweep.local_ray``);
    the sweep runs on it when it suits the command line, which shuts it down either way."""
    # torch and the registries load here, after a local Ray has begun to start
    from sweep.options import fail, list_spaces_text, parse_args

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list_spaces:
        print(list_spaces_text())
        return 0
    if args.list_backbones:
        from trainables.backbones import list_backbones_text

        print(list_backbones_text())
        return 0
    if args.check_data:  # the dataset alone, loaded as the sweep would: no Ray
        from sweep.check_data import check_data_text

        try:
            print(check_data_text(args), flush=True)
        except UserError as err:
            fail(str(err))
        return 0
    try:
        plan = _plan(args, argv)
    except UserError as err:  # anything else is a bug and keeps its traceback
        fail(str(err))
    for warning in plan.warnings:
        print(f"tune.py: warning: {warning}", file=sys.stderr, flush=True)
    from sweep.resume import resume_command
    from sweep.runner import SweepInterrupted, run_sweep
    from sweep.summary import format_summary

    try:
        arms, experiment_id, parent = run_sweep(plan, early_ray)
    except UserError as err:  # the cluster cannot run this sweep: refused before any run
        fail(str(err))
    except SweepInterrupted as stop:
        print(
            f"\nInterrupted; the sweep's state is saved. Resume with:\n"
            f"{resume_command(plan.argv, stop.parent_run_id)}",
            flush=True,
        )
        return EXIT_INTERRUPTED
    from trainables.edge import tracking

    tags = tracking.client(plan.tracking_uri).get_run(parent).data.tags  # the sweep's answer
    print(format_summary(plan, arms, experiment_id, parent, tags), flush=True)
    # Every logged run stays; the status says whether each arm produced a result at all.
    return 0 if all(arm.best_config is not None for arm in arms) else 1


def _plan(args, argv: list[str]) -> SweepPlan:
    """A new sweep's plan, or the plan of the sweep ``--resume`` names."""
    from sweep.plan import build_plan

    if not args.resume:
        plan = build_plan(args)
        return dataclasses.replace(plan, argv=tuple(argv), stamp=time.strftime("%Y%m%d-%H%M%S"))
    from sweep.resume import locate, refuse_two_experiments

    point = locate(args, argv)
    plan = build_plan(point.args)
    storage_path = point.storage_path or plan.storage_path
    refuse_two_experiments(storage_path, plan.space.name, point.stamp)
    return dataclasses.replace(
        plan,
        argv=point.argv,
        stamp=point.stamp,
        parent_run_id=point.parent_run_id,
        storage_path=storage_path,
    )


def exit_at_once(status: int) -> NoReturn:
    """Exit with ``status`` once everything is written, skipping the interpreter's teardown:
    unloading torch, Ray and MLflow took over two seconds after a finished sweep. The steps a
    normal exit takes before that teardown still run, in its order: thread pools are shut down
    and running threads waited for, then the exit handlers run (MLflow's, Ray's, logging's)."""
    # The interpreter's own exit steps; neither has a public name.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main_with_early_ray(argv: list[str]) -> int:
    """``main``, with a local Ray starting beside the driver's imports and validation when
    the command line looks like a local sweep; shut down whatever ``main`` ends in, at once
    for bad input (after its error line)."""
    options = options_from_argv(argv)
    early = LocalRay.start(options) if options is not None else None
    try:
        return main(argv, early)
    except SystemExit as stop:  # bad input, its line printed: Ray need not finish starting
        if early is not None and not early.taken:
            early.abandon(stop.code if isinstance(stop.code, int) else 1)
        raise
    finally:
        if early is not None:
            early.close()


if __name__ == "__main__":
    exit_at_once(main_with_early_ray(sys.argv[1:]))
