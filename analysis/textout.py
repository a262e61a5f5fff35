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

import numpy as np
import pandas as pd

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


def summary_sentence(table: pd.DataFrame, baseline: str, other: str) -> str:
    """Plain words for the metrics whose interval excludes zero."""
    clear = table[table["verdict"].str.endswith(" better")]
    if clear.empty:
        return (
            f"No metric shows a clear difference between {other} and {baseline}: for every "
            "metric an interval includes 0 (or there were too few pairs)."
        )
    named = [
        f"{metric_label(m, c)}: {v}"
        for m, c, v in zip(clear["metric"], clear["class"], clear["verdict"], strict=True)
    ]
    return f"Both intervals exclude 0 for: {'; '.join(named)}. Other metrics: no clear difference."


def comparison_display(table: pd.DataFrame, baseline: str, other: str) -> pd.DataFrame:
    """The comparison table with level names as headers and the CI as one column."""
    shown = table.rename(
        columns={
            "baseline_mean": baseline,
            "other_mean": other,
            "difference": f"{other} − {baseline}",
        }
    )
    shown["metric"] = [m.split(".", 1)[0] for m in table["metric"]]
    ci = [
        f"[{low:+.4f}, {high:+.4f}]" if pd.notna(low) else ""
        for low, high in zip(table["ci_low"], table["ci_high"], strict=True)
    ]
    t_ci = [
        f"[{low:+.4f}, {high:+.4f}]" if pd.notna(low) else ""
        for low, high in zip(table["t_low"], table["t_high"], strict=True)
    ]
    shown = shown.drop(columns=["ci_low", "ci_high", "t_low", "t_high"])
    shown.insert(shown.columns.get_loc("verdict"), "95% CI bootstrap", ci)
    shown.insert(shown.columns.get_loc("verdict"), "95% CI t", t_ci)
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
