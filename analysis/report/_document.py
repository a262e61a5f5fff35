"""The report's document: the context every section gets, the registry of sections (drawn
in the order they are registered), and the small HTML helpers they share."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from analysis import plots, results
from analysis.classes import ClassInfo
from analysis.errors import AnalysisError
from analysis.store import Store, Sweep
from analysis.textout import (
    display_frame,
)
from trainables import contract
from trainables.registry import Registry

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.5em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #555; font-style: italic; } .refusal { background: #fff4e5; padding: 0.6em; }
.answer { font-size: 1.15em; font-weight: bold; }
nav a { margin-right: 1em; }
"""


@dataclass
class Context:
    """What every section may use; the best run is resolved once."""

    store: Store
    sweep: Sweep
    run: pd.Series
    info: ClassInfo | None
    top_k: int
    resamples: int
    seed: int
    split: str  # test or val: the split whose metrics the best and compare sections show
    comparisons: dict[tuple[str, str], results.Comparison | AnalysisError]

    def comparison(self, baseline: str, other: str) -> results.Comparison:
        """Computed once for the answer and the evidence; a refusal is raised where used."""
        key = (baseline, other)
        if key not in self.comparisons:
            try:
                self.comparisons[key] = results.compare(
                    self.store,
                    self.sweep,
                    factor=self.sweep.factor,
                    levels=[baseline, other],
                    resamples=self.resamples,
                    seed=self.seed,
                    split=self.split,
                )
            except AnalysisError as error:
                self.comparisons[key] = error
        found = self.comparisons[key]
        if isinstance(found, AnalysisError):
            raise found
        return found


@dataclass(frozen=True)
class Report:
    html: str
    unavailable: dict[str, str]  # section key -> why it could not be drawn
    split: str = contract.VAL


@dataclass(frozen=True)
class Section:
    key: str  # the anchor in the page
    title: str
    build: Callable[[Context], str]


# The report draws its sections in the order they are registered (defined) below.
SECTIONS: Registry[Section] = Registry("report section", AnalysisError)


def section(key: str, title: str) -> Callable[[Callable[[Context], str]], Callable]:
    """Register a function drawing one section of the report."""
    return SECTIONS.decorator(key, lambda build: Section(key, title, build))


def section_titles() -> dict[str, str]:
    return {entry.key: entry.title for entry in SECTIONS.entries()}


def build_report(
    store: Store,
    sweep: Sweep,
    *,
    run: str = "best",
    top_k: int = 3,
    resamples: int = 10_000,
    seed: int = 0,
    split: str | None = None,
) -> Report:
    """The whole HTML document, and the sections that had to say "not available"."""
    context = Context(
        store=store,
        sweep=sweep,
        run=results.resolve_run(sweep, run),
        info=results.class_info(store, sweep),
        top_k=top_k,
        resamples=resamples,
        seed=seed,
        split=results.resolve_split(sweep, split),
        comparisons={},
    )
    unavailable: dict[str, str] = {}
    body = [_section(entry, context, unavailable) for entry in SECTIONS.entries()]
    title = f"Sweep report: {sweep.experiment_name} / {sweep.parent_run_name}"
    nav = " ".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in section_titles().items())
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n" + "\n".join(body) + "</body></html>\n"
    )
    return Report(document, unavailable, context.split)


def _section(entry: Section, context: Context, unavailable: dict[str, str]) -> str:
    try:
        content = entry.build(context)
    except AnalysisError as error:
        unavailable[entry.key] = str(error)
        content = note(f"Not available: {error}")
    except Exception as error:  # one broken section must not cost the whole report
        unavailable[entry.key] = f"failed: {type(error).__name__}: {error}"
        content = note(f"This section failed: {type(error).__name__}: {error}", "refusal")
    title = html.escape(entry.title)
    return f'<section id="{entry.key}"><h2>{title}</h2>\n{content}</section>\n'


# Small HTML helpers.
def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>\n'


def para(text: str) -> str:
    return f"<p>{html.escape(text)}</p>\n"


def table_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return note("(none)")
    return display_frame(frame).to_html(index=False, escape=True, border=0) + "\n"


def image(figure: Figure, alt: str) -> str:
    encoded = base64.b64encode(plots.to_png(figure)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">\n'


def run_label(run: pd.Series) -> str:
    return f"{run['run_name']} ({run['run_id'][:8]})"
