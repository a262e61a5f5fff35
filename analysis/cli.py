"""``python -m analysis``: best configs, confusion matrices, paired comparisons, one report,
and a logged model's predictions on image files.

Every command reads MLflow (no Ray), prints a table, and on bad input prints one line
``analysis: error: ...`` to stderr and exits with status 2 before writing anything.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from analysis import anytime, results, stats, tables
from analysis.confusion import matrix_frame, normalise_rows
from analysis.store import Store, Sweep, default_tracking_uri
from analysis.textout import (
    FORMATS,
    Block,
    Titled,
    comparison_display,
    comparison_sentences,
    render,
    write_atomic,
)
from trainables.contract import best_metric
from trainables.errors import UserError

if TYPE_CHECKING:
    from analysis import predict as predicting

OUT_ROOT = Path("analysis-out")

PAIRING_HELP = """\
pairing rule: candidates are the FINISHED child runs whose value of the factor's param (the
arm, for the sweep's own factor) is one of the two levels (the first is the baseline;
difference = second - first). When the factor
is the sweep's own factor and both levels have confirmation runs (role=confirmation), those
are paired by seed (each arm's tuned best config re-run per seed with the same split and
initial weights). Otherwise runs are paired when all their params are equal except the
factor, role/arm, and params absent for every run of one level (conditional ones such as
gamma). With no pairs the command refuses rather than compare the best run of each arm.
With --confirm-splits, confirmation runs pair by (split_seed, seed) and the output shows how
much of the spread comes from the split and how much from the seed.

Each metric (the sweep's metric first, then macro F1, balanced accuracy, accuracy, then
per-class recall and F1, rarest class first) is taken at each run's best epoch (chosen on
val), on the test split by default when the confirmation runs were scored on it (--split).
Its mean paired difference gets a 95% percentile bootstrap interval (pairs resampled, fixed
seed), a 95% Student-t interval and a paired t-test; differences print in percentage points
(losses in their own units). The sweep's metric is the primary comparison: a level is called
better only when both intervals exclude 0 (with few pairs the bootstrap interval is too
narrow). Every other row is secondary: its verdict comes from Holm-adjusted p-values across
those rows. Otherwise the verdict is "no clear difference". Under the verdict: the smallest
difference these pairs could detect with 80% power, and how many pairs would detect 1 point.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is the same single line as every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"analysis: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m analysis",
        description="Best configs, confusion matrices, paired comparisons and one HTML report "
        "of a sweep, and a logged model's predictions on image files, read from MLflow (no Ray "
        "needed).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_add_best, _add_confusion, _add_compare, _add_report, _add_predict):
        add_command(commands)
    return parser


def _add_best(commands: argparse._SubParsersAction) -> None:
    best = commands.add_parser(
        "best",
        parents=[_sweep_options(), _output_options(), _split_options()],
        help="top configs per arm/backbone and confirmation mean ± std",
        description="Top-k search runs per arm (and backbone) by the sweep's metric, with "
        "their searched hyperparameters and val metrics at the best epoch; confirmation runs "
        "as mean ± std over seeds, on the test split when they were scored on it (--split); "
        "per arm, the trial at which its search found its best.",
    )
    best.add_argument("--top-k", type=_positive, default=3, help="runs per arm (default 3)")
    best.set_defaults(handler=cmd_best)


def _add_confusion(commands: argparse._SubParsersAction) -> None:
    confusion = commands.add_parser(
        "confusion",
        parents=[_sweep_options(), _output_options()],
        help="train/val confusion matrices of one run (PNG + CSV)",
        description="Train and val confusion matrices of one run at its best epoch (counts, "
        "coloured by share of the true class; CSVs of counts and row-normalised), with "
        "per-class precision/recall/F1 and the best and worst class.",
    )
    _run_option(confusion)
    confusion.add_argument(
        "--out-dir",
        type=Path,
        help="where the PNG and CSV files go (default ./analysis-out/<run name>/)",
    )
    confusion.set_defaults(handler=cmd_confusion)


def _add_compare(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        parents=[_sweep_options(), _output_options(), _bootstrap_options(), _split_options()],
        help="paired with-versus-without comparison of a factor's two levels",
        description="Paired comparison of two levels of a factor.",
        epilog=PAIRING_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument(
        "--factor",
        help="config key to compare: loss, optimizer, freeze, ... (default: the sweep's factor)",
    )
    compare.add_argument(
        "--levels",
        type=_levels,
        help="baseline,other (e.g. ce,focal); default: the two levels present, sorted",
    )
    compare.set_defaults(handler=cmd_compare)


def _add_report(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        parents=[_sweep_options(), _bootstrap_options(), _split_options()],
        help="one self-contained HTML report, also logged to the parent run",
        description="All tables and figures in one HTML file with embedded images that "
        "opens offline; also logged to the sweep's parent run as report/report.html.",
    )
    _run_option(report)
    report.add_argument("--top-k", type=_positive, default=3, help="runs per arm (default 3)")
    report.add_argument(
        "--output",
        type=Path,
        help="HTML file (default ./analysis-out/report-<parent run id[:8]>.html)",
    )
    report.add_argument(
        "--no-log", action="store_true", help="do not log the report to the parent run"
    )
    report.set_defaults(handler=cmd_report)


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="a logged model's predictions on image files (CSV), scored against class folders",
        description="Run a model the sweep logged on an image file, a folder of images, or a "
        "folder of class folders, as mlflow.pyfunc.load_model(...).predict(paths) would. "
        "Writes a CSV (path, predicted class, one probability per class) and prints the first "
        "rows; with class folders also accuracy, macro F1 and the confusion matrix. "
        "Unreadable files are skipped and counted, hidden files (.name) ignored. A model "
        "tune.py did not log is refused before any of its code runs.",
    )
    predict.add_argument("input", type=Path, help="an image file or a folder")
    which = predict.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="MLflow experiment of the sweep (with --run)")
    which.add_argument(
        "--model", help="a model URI: models:/NAME/VERSION, models:/MODEL_ID, runs:/RUN_ID/model"
    )
    predict.add_argument(
        "--run",
        default="best",
        help="with --experiment: 'best' (the sweep's winning model, the default), a run id or "
        "a run name",
    )
    predict.add_argument("--parent-run", help="sweep (parent run) id or name; default: the latest")
    predict.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    predict.add_argument(
        "--unlabelled",
        action="store_true",
        help="read sub-folders as plain folders of images, not as class folders",
    )
    predict.add_argument("--batch-size", type=_positive, default=256, help="(default 256)")
    predict.add_argument(
        "--output", type=Path, help="CSV file (default ./analysis-out/predictions-<model>.csv)"
    )
    predict.set_defaults(handler=cmd_predict)


def _sweep_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--experiment", required=True, help="MLflow experiment name")
    options.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)",
    )
    options.add_argument(
        "--parent-run", help="sweep (parent run) id or name; default: the latest sweep"
    )
    return options


def _output_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (terminal, default), csv or markdown",
    )
    options.add_argument("--output", type=Path, help="write the tables to this file")
    return options


def _bootstrap_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--resamples",
        type=_positive,
        default=stats.DEFAULT_RESAMPLES,
        help=f"bootstrap resamples (default {stats.DEFAULT_RESAMPLES})",
    )
    options.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    return options


def _split_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--split",
        choices=results.EVALUATED_SPLITS,
        default=None,
        help="which split's metrics to show, at each run's best epoch (chosen on val): test "
        "(the held-out split, the default when the sweep's confirmation runs were scored on "
        "it) or val (the default otherwise: the split the configs were selected on)",
    )
    return options


def _run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        default="best",
        help="'best' (highest best_<metric>, the default), a run id or a run name",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _levels(text: str) -> list[str]:
    levels = [level.strip() for level in text.split(",") if level.strip()]
    if len(levels) != 2:
        raise argparse.ArgumentTypeError(f"expected two levels 'baseline,other', got '{text}'")
    return levels


# Commands.
def cmd_best(args: argparse.Namespace) -> list[Block]:
    store, sweep = _open(args)
    split = results.resolve_split(sweep, args.split)
    best = results.best_tables(store, sweep, top_k=args.top_k, split=split)
    return [
        _sweep_line(sweep, split),
        Titled(
            f"top {args.top_k} search runs per arm by {best_metric(best.metric)} (val)", best.top
        ),
        Titled(f"confirmation runs: mean ± std over seeds ({split})", best.confirmation),
        Titled(
            "search progress per arm: the trial its best came at, trials in the order they "
            "started (in the last quarter: more trials might still help)",
            anytime.progress_table(results.search_progress(store, sweep), sweep.metric),
        ),
    ]


def cmd_confusion(args: argparse.Namespace) -> list[Block]:
    store, sweep = _open(args)
    run = results.resolve_run(sweep, args.run)
    matrices = results.run_confusion(store, run)
    out_dir = args.out_dir or OUT_ROOT / _safe_name(run["run_name"])
    files = _confusion_files(matrices)
    for name, payload in files.items():
        write_atomic(out_dir / name, payload)
    blocks: list[Block] = [f"run {run['run_name']} ({run['run_id']}), at its best epoch"]
    for split in matrices.counts:
        frame = matrix_frame(matrices.counts[split], matrices.classes).reset_index()
        blocks.append(Titled(f"{split} confusion (rows true, columns predicted)", frame, False))
        best, worst = matrices.best_and_worst(split)
        blocks.append(f"{split}: best class {best}, worst class {worst} (by F1)")
    blocks.append(Titled("per-class precision, recall and F1", matrices.per_class_table()))
    blocks.append(f"wrote {len(files)} files to {out_dir}")
    return blocks


def _confusion_files(matrices: results.RunConfusion) -> dict[str, bytes | str]:
    from analysis import plots  # matplotlib only for the commands that draw

    files: dict[str, bytes | str] = {}
    for split, counts in matrices.counts.items():
        files[f"{split}_confusion.csv"] = matrix_frame(counts, matrices.classes).to_csv()
        normalised = matrix_frame(normalise_rows(counts), matrices.classes)
        files[f"{split}_confusion_normalized.csv"] = normalised.to_csv()
        figure = plots.confusion_figure(counts, matrices.classes, split)
        files[f"{split}_confusion.png"] = plots.to_png(figure)
    files["per_class.csv"] = matrices.per_class_table().to_csv(index=False)
    return files


def cmd_compare(args: argparse.Namespace) -> list[Block]:
    store, sweep = _open(args)
    comparison = results.compare(
        store,
        sweep,
        factor=args.factor,
        levels=args.levels,
        resamples=args.resamples,
        seed=args.seed,
        split=args.split,
    )
    pairing, table = comparison.pairing, comparison.table
    raw = table.assign(baseline=pairing.baseline, other=pairing.other, split=comparison.split)
    return [
        _sweep_line(sweep, comparison.split),
        f"factor {pairing.factor}: {pairing.other} − {pairing.baseline}, n = {pairing.n} pairs "
        f"({pairing.rule}); {comparison.split} values at each run's best epoch (chosen on "
        f"val); differences in percentage points, losses in their units; 95% intervals "
        f"(bootstrap: {args.resamples} resamples); classes rarest first",
        *comparison.notes,
        *comparison_sentences(comparison),
        *tables.diverged_seeds(sweep.runs),
        *([note] if (note := stats.few_pairs_note(pairing.n)) else []),
        Titled(
            f"paired differences ({comparison.split})",
            comparison_display(table, pairing),
            csv_frame=raw,
        ),
        Titled("pairs", pairing.pairs[["key", "baseline_run", "other_run"]], in_csv=False),
    ]


def cmd_report(args: argparse.Namespace) -> list[Block]:
    from analysis.report import build_report, section_titles

    store, sweep = _open(args)
    report = build_report(
        store,
        sweep,
        run=args.run,
        top_k=args.top_k,
        resamples=args.resamples,
        seed=args.seed,
        split=results.resolve_split(sweep, args.split),
    )
    path = args.output or OUT_ROOT / f"report-{sweep.parent_run_id[:8]}.html"
    write_atomic(path, report.html)
    titles = section_titles()
    status = [report.unavailable.get(key, "ok") for key in titles]
    blocks: list[Block] = [
        _sweep_line(sweep, report.split),
        Titled("sections", pd.DataFrame({"section": list(titles.values()), "status": status})),
        f"wrote {path}",
    ]
    if not args.no_log:
        artifact = store.log_report(sweep.parent_run_id, path)
        blocks.append(f"logged to parent run {sweep.parent_run_id} as {artifact}")
    return blocks


def cmd_predict(args: argparse.Namespace) -> list[Block]:
    from analysis import predict  # torch and MLflow's pyfunc: only for this command
    from trainables.data.image_files import skipped_line

    inputs = predict.collect_inputs(args.input, unlabelled=args.unlabelled)
    store, model_uri, source = _model_to_predict(args)
    # Its MLmodel file first: loading a model runs its code, and a foreign one is refused.
    info = predict.model_info(store.model_description(model_uri), model_uri)
    predict.check_labels(inputs, info)
    model = store.load_model(model_uri)
    result = predict.predict(model, inputs, info, args.batch_size)
    path = args.output or OUT_ROOT / f"predictions-{_safe_name(source or model_uri)}.csv"
    write_atomic(path, result.table.to_csv(index=False))
    read = f"{_count(len(result.table), 'image')} from {inputs.root}"
    if result.skipped:
        read += f"; {skipped_line(result.skipped, len(inputs.paths), inputs.root)}"
    shown = predict.preview(result, inputs.root)
    blocks: list[Block] = [
        f"model {model_uri}" + (f" ({source})" if source else ""),
        read,
        Titled(f"first {len(shown)} predictions", shown),
        *_label_blocks(result, inputs, info),
        f"wrote {path}",
    ]
    return blocks


def _label_blocks(
    result: predicting.Predictions, inputs: predicting.ImageInputs, info: predicting.ModelInfo
) -> list[Block]:
    """Scores against the class folders, when the input had them."""
    from analysis import predict

    if predict.TRUE in result.table.columns:
        scores = predict.score(result.table, info.classes)
        return [
            f"against the class folders: accuracy {scores.accuracy:.4f}, macro F1 "
            f"{scores.macro_f1:.4f} ({len(result.table)} images)",
            Titled("confusion (rows: folder, columns: predicted)", scores.confusion.reset_index()),
        ]
    if inputs.labels is not None:
        return ["multi-label model: no scores against the class folders"]
    return []


def _model_to_predict(args: argparse.Namespace) -> tuple[Store, str, str | None]:
    """The store, the model's URI and the run it came from: ``--model``, or a sweep's run."""
    uri = args.tracking_uri or default_tracking_uri()
    if args.model:
        return Store(uri), args.model, None
    store, sweep = results.open_sweep(uri, args.experiment, args.parent_run)
    run = results.model_run(sweep, args.run)
    return store, run[results.MODEL_COLUMN], f"run {run['run_name']}"


def _open(args: argparse.Namespace) -> tuple[Store, Sweep]:
    uri = args.tracking_uri or default_tracking_uri()
    return results.open_sweep(uri, args.experiment, args.parent_run)


def _sweep_line(sweep: Sweep, split: str | None = None) -> str:
    shown = f"; showing {split} metrics" if split else ""
    return (
        f"experiment {sweep.experiment_name}, sweep {sweep.parent_run_name} "
        f"({sweep.parent_run_id}), metric {sweep.metric} ({sweep.mode}){shown}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "run"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow and Alembic log at INFO on some store operations; the terminal is for results.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        blocks = args.handler(args)
        fmt = getattr(args, "format", "table")
        text = render(blocks, fmt)
        # report and predict write their own files; --output names those
        own_files = args.command in ("report", "predict")
        output = None if own_files else getattr(args, "output", None)
        if output is not None:
            write_atomic(output, text)
            print(f"wrote {output}")
        else:
            sys.stdout.write(text)
    except UserError as error:  # anything else is a bug and keeps its traceback
        print(f"analysis: error: {error}", file=sys.stderr)
        return 2
    return 0
