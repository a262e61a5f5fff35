"""Search the hyperparameters of image-classifier fine-tuning: `python tune.py --space focal`.

Parses and validates the command line (bad input: one line, exit status 2, nothing written),
runs the sweep on Ray Tune with Optuna and ASHA, and prints the best config of each arm.
"""

from __future__ import annotations

import sys

from sweep.plan import build_plan, fail, list_spaces_text, parse_args
from trainables.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_spaces:
        print(list_spaces_text())
        return 0
    try:
        plan = build_plan(args)
    except UserError as err:  # anything else is a bug and keeps its traceback
        fail(str(err))
    for warning in plan.warnings:
        print(f"tune.py: warning: {warning}", file=sys.stderr, flush=True)
    from sweep.runner import run_sweep
    from sweep.summary import format_summary

    try:
        arms, experiment_id, parent = run_sweep(plan)
    except UserError as err:  # the cluster cannot run this sweep: refused before any run
        fail(str(err))
    print(format_summary(plan, arms, experiment_id, parent), flush=True)
    # Every logged run stays; the status says whether each arm produced a result at all.
    return 0 if all(arm.best_config is not None for arm in arms) else 1


if __name__ == "__main__":
    sys.exit(main())
