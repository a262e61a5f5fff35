"""Tables as terminal text, Markdown or CSV, and files written so a failure leaves none.

Markdown is rendered here rather than with ``DataFrame.to_markdown`` because that needs the
optional ``tabulate`` package.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import stats

if TYPE_CHECKING:
    from analysis.results import Comparison

FORMATS = ("table", "csv", "markdown")


@dataclass(frozen=True)
class Titled:
    """A table with a heading. ``in_csv=False`` keeps it out of CSV output (e.g. a matrix
    that does not stack with the command's main table)."""

    title: str
    frame: pd.DataFrame
    in_csv: bool = True
    csv_frame: pd.DataFrame | None = None  # raw numbers for CSV when ``frame`` is for reading

    @property
    def for_csv(self) -> pd.DataFrame:
        return self.frame if self.csv_frame is None else self.csv_frame


Block = Titled | str  # a string is a note line, shown in text formats only


def number(value: object) -> str:
    """Four significant digits: enough for metrics, and lr 3e-4 stays readable."""
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return ""
        # Rounding noise (a std of 1e-16 over identical values) reads as 0.
        return "0" if abs(value) < 1e-12 else f"{value:.4g}"
    if value is None or value is pd.NA:
        return ""
    return str(value)


def combine_mean_std(frame: pd.DataFrame) -> pd.DataFrame:
    """Each ``x_mean``/``x_std`` column pair becomes one ``x`` column reading ``m ± s``."""
    out = frame.copy()
    for name in [c.removesuffix("_mean") for c in frame.columns if c.endswith("_mean")]:
        std = f"{name}_std"
        if std not in frame.columns:
            continue
        mean_text = frame[f"{name}_mean"].map(number)
        std_text = frame[std].map(lambda s: f" ± {number(s)}" if pd.notna(s) else "")
        position = out.columns.get_loc(f"{name}_mean")
        out = out.drop(columns=[f"{name}_mean", std])
        out.insert(position, name, mean_text + std_text)
    return out


def display_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return combine_mean_std(frame).apply(lambda col: col.map(number)).astype(str)


def to_text(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(none)"
    return display_frame(frame).to_string(index=False)


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(none)_"
    shown = display_frame(frame)
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    aligned = dict(zip(frame.columns, numeric, strict=True))
    header = "| " + " | ".join(_cell(c) for c in shown.columns) + " |"
    rule = "|" + "|".join("---:" if aligned.get(c, False) else "---" for c in shown.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in shown.itertuples(False)]
    return "\n".join([header, rule, *body])


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_csv(blocks: Sequence[Block]) -> str:
    """The CSV tables of the blocks; several are stacked with a leading ``table`` column so
    the output stays one parseable table."""
    frames = [b for b in blocks if isinstance(b, Titled) and b.in_csv]
    if not frames:
        return ""
    if len(frames) == 1:
        return frames[0].for_csv.to_csv(index=False)
    stacked = pd.concat(
        [b.for_csv.assign(table=b.title)[["table", *b.for_csv.columns]] for b in frames],
        ignore_index=True,
    )
    return stacked.to_csv(index=False)


def render(blocks: Sequence[Block], fmt: str) -> str:
    if fmt == "csv":
        return to_csv(blocks)
    parts = []
    for block in blocks:
        if isinstance(block, str):
            parts.append(block)
        elif fmt == "markdown":
            parts.append(f"### {block.title}\n\n{to_markdown(block.frame)}")
        else:
            parts.append(f"{block.title}\n{to_text(block.frame)}")
    return "\n\n".join(parts) + "\n"


def metric_label(metric: str, class_name: str = "") -> str:
    """``val_recall.ant _rare_`` reads as ``val_recall (ant (rare))``: the real class name."""
    return f"{metric.split('.', 1)[0]} ({class_name})" if class_name else metric


# How a metric and its numbers read in sentences.
METRIC_WORDS = {
    "macro_f1": "macro F1",
    "balanced_accuracy": "balanced accuracy",
    "accuracy": "accuracy",
    "loss": "loss",
    "map": "mAP",
    "iou": "IoU",
    "recall": "recall",
    "precision": "precision",
    "f1": "F1",
    "label_accuracy": "label accuracy",
}


def metric_words(metric: str, class_name: str = "") -> str:
    """``test_macro_f1`` -> ``test macro F1``; ``val_recall.x`` of class ``x`` -> ``val
    recall of x``."""
    name = metric.split(".", 1)[0]
    split, _, kind = name.partition("_")
    words = f"{split} {METRIC_WORDS.get(kind, kind.replace('_', ' '))}"
    return f"{words} of {class_name}" if class_name else words


def in_points(metric: str) -> bool:
    """Metrics in [0, 1] read as percentage points; losses stay in their own units."""
    return not metric.split(".", 1)[0].endswith("_loss")


def signed(value: float, metric: str) -> str:
    """The one format of differences and interval ends: points with one decimal, losses
    with three."""
    if pd.isna(value):
        return ""
    if in_points(metric):
        return f"{value * 100:+.1f}"
    return f"{value:+.3f}"


def level_value(value: float, metric: str) -> str:
    """A level's mean, in the unit of its differences (unsigned)."""
    if pd.isna(value):
        return ""
    return f"{value * 100:.1f}" if in_points(metric) else f"{value:.3f}"


def difference_text(value: float, metric: str) -> str:
    return signed(value, metric) + (" points" if in_points(metric) else "")


def interval_text(low: float, high: float, metric: str) -> str:
    return f"[{signed(low, metric)}, {signed(high, metric)}]" if pd.notna(low) else ""


def pvalue_text(p: float) -> str:
    if pd.isna(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def unit_words(metric: str) -> str:
    return "points" if in_points(metric) else "units of the loss"


def headline_sentence(row: pd.Series, pairing: stats.Pairing, class_name: str = "") -> str:
    """The answer in one line: who wins on which metric, by how much, with the t interval
    (the honest one with few pairs) and the bootstrap one."""
    metric = row["metric"]
    words = metric_words(metric, class_name)
    amount = (
        f"{difference_text(row['difference'], metric)} "
        f"{interval_text(row['t_low'], row['t_high'], metric)}"
    )
    if not stats.is_clear(pd.Series([row["verdict"]])).iloc[0]:
        if str(row["verdict"]).startswith("too few"):
            return f"{words}: {row['verdict']}, nothing to conclude"
        a, b = pairing.label(pairing.other), pairing.label(pairing.baseline)
        covers = "covers 0" if row["verdict"] == stats.NO_CLEAR_DIFFERENCE else "misses 0"
        return (
            f"no clear difference between {a} and {b} on {words}: {amount} (the interval "
            f"{covers}{'' if covers == 'covers 0' else ', but not after the Holm correction'})"
        )
    return (
        f"{row['verdict']} on {words}: {amount} "
        f"(95% t interval; bootstrap {interval_text(row['ci_low'], row['ci_high'], metric)}; "
        f"paired t-test p {pvalue_text(row['p_value'])}, n = {row['n']} pairs)"
    )


def power_sentence(power: stats.PowerSummary, metric: str) -> str:
    """What these pairs could have seen, in plain words."""
    if power.n < 2 or np.isnan(power.sd):
        return f"Power: {power.n} pair(s) are too few to see anything; add seeds."
    if np.isnan(power.detectable):
        return (
            f"Power: the {power.n} differences are all equal (SD 0), so their spread says "
            "nothing about the power; add seeds."
        )
    smallest = difference_text(power.detectable, metric).lstrip("+")
    sd = difference_text(power.sd, metric).lstrip("+")
    full_range = 1.0 if in_points(metric) else np.inf
    reference = "1 point" if in_points(metric) else f"{power.reference:g}"
    needed = (
        f"about {power.pairs_for_reference} pairs would detect a difference of {reference}"
        if power.pairs_for_reference
        else f"no feasible number of pairs (> {stats.MOST_PAIRS}) would detect {reference}"
    )
    text = (
        f"Power: with {power.n} pairs and differences spread by {sd} (SD), only a true "
        f"difference of {smallest} or more would be detected 80% of the time (two-sided 5%); "
        f"{needed}."
    )
    if power.detectable >= full_range:
        text += f" {power.n} pairs are too few to see anything on this metric."
    return text


def multiplicity_sentence(table: pd.DataFrame) -> str:
    primary = table.loc[table["role"] == stats.PRIMARY, "metric"]
    n_secondary = int((table["role"] == stats.SECONDARY).sum())
    name = metric_words(primary.iloc[0]) if len(primary) else "the sweep's metric"
    return (
        f"Multiplicity: {name} (the sweep's metric) is the primary comparison; the other "
        f"{n_secondary} rows are secondary, their verdicts from Holm-adjusted p-values of "
        f"paired t-tests across those {n_secondary} rows (at most 5% chance of any false "
        "winner among them)."
    )


def secondary_sentence(table: pd.DataFrame, pairing: stats.Pairing, split: str) -> str:
    """The secondary rows that stay clear after Holm, with each class's image count."""
    clear = table[(table["role"] == stats.SECONDARY) & stats.is_clear(table["verdict"])]
    if clear.empty:
        return "Secondary rows: no clear difference after the Holm correction."
    counts = column_or_blank(clear, f"{split}_n")
    named = []
    for (_, row), count in zip(clear.iterrows(), counts, strict=True):
        images = f" ({count} {split} images)" if count != "" else ""
        named.append(
            f"{row['verdict']} on {metric_words(row['metric'], row.get('class', ''))}{images}: "
            f"{difference_text(row['difference'], row['metric'])} "
            f"{interval_text(row['t_low'], row['t_high'], row['metric'])}, "
            f"p_holm {pvalue_text(row['p_holm'])}"
        )
    rest = "Other secondary rows: no clear difference."
    return f"Secondary, clear after Holm: {'; '.join(named)}. {rest}"


def column_or_blank(table: pd.DataFrame, name: str) -> list:
    if name not in table.columns:
        return [""] * len(table)
    return ["" if pd.isna(v) else int(v) for v in table[name]]


def design_sentence(pairing: stats.Pairing, sources: stats.VarianceSources, metric: str) -> str:
    """How the pairs were made; with several train/val splits, the two sources of variance."""
    if pairing.splits < 2:
        return (
            f"pairs: {pairing.n} seeds on one train/val split, so the intervals show seed "
            "variance only (tune.py --confirm-splits K adds split variance)"
        )
    text = f"pairs over {pairing.splits} splits × {pairing.seeds} seeds ({pairing.n} pairs)"
    if np.isnan(sources.within_split_sd):
        return text
    return (
        f"{text}; SD of the {metric_words(metric)} difference from split to split "
        f"{difference_text(sources.between_splits_sd, metric).lstrip('+')}, from seed to seed "
        f"on one split {difference_text(sources.within_split_sd, metric).lstrip('+')}"
    )


def comparison_sentences(comparison: Comparison) -> list[str]:
    """The answer first (the primary verdict), then how sure: power, the multiplicity rule,
    the secondary rows that stay clear, and where the pairs' variance comes from."""
    primary = comparison.primary
    return [
        headline_sentence(primary, comparison.pairing, primary.get("class", "")),
        power_sentence(comparison.power, primary["metric"]),
        multiplicity_sentence(comparison.table),
        secondary_sentence(comparison.table, comparison.pairing, comparison.split),
        design_sentence(comparison.pairing, comparison.sources, primary["metric"]),
    ]


def comparison_display(table: pd.DataFrame, pairing: stats.Pairing) -> pd.DataFrame:
    """The comparison table as read: short metric names, means and differences in points,
    intervals in the same format, p-values, verdicts."""
    metrics = table["metric"]
    shown = table[[c for c in table.columns if c in ("class", "role", "n") or c.endswith("_n")]]
    shown.insert(0, "metric", [metric_words(m).split(" ", 1)[1] for m in metrics])
    shown = shown.copy()
    base, other = pairing.baseline, pairing.other
    shown[base] = [level_value(v, m) for v, m in zip(table["baseline_mean"], metrics, strict=True)]
    shown[other] = [level_value(v, m) for v, m in zip(table["other_mean"], metrics, strict=True)]
    shown[f"{other} − {base}"] = [
        signed(v, m) for v, m in zip(table["difference"], metrics, strict=True)
    ]
    for name, low, high in (
        ("95% CI t", "t_low", "t_high"),
        ("95% CI bootstrap", "ci_low", "ci_high"),
    ):
        shown[name] = [
            interval_text(lo, hi, m)
            for lo, hi, m in zip(table[low], table[high], metrics, strict=True)
        ]
    shown["p"] = table["p_value"].map(pvalue_text)
    shown["p (Holm)"] = table["p_holm"].map(pvalue_text)
    shown["verdict"] = table["verdict"]
    return shown


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; the user's default
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
