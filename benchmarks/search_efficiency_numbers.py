"""The numbers of ``search_efficiency.py``, from its trial records: anytime curves, epochs to
a target, the paired comparison, ASHA's cost; then the tables and the figure. Pure functions
of the records but ``offline_asha`` (the tool's ASHA scheduler) and ``draw``."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BASELINE = "random"

# The tables' order: the default first, the variants after the four methods.
SHOWN = ("tpe+asha", "random+asha", "tpe", "random")
# The figure's colour (the sampler) and line (ASHA solid, none dashed) per method; the
# variants dash-dotted, each its own colour.
LINES = {
    "tpe+asha": ("C0", "-"),
    "random+asha": ("C1", "-"),
    "tpe": ("C0", "--"),
    "random": ("C1", "--"),
}


def shown(methods: Sequence[str]) -> list[str]:
    """``methods`` in the tables' order: the four, then the variants as first recorded."""
    present = list(dict.fromkeys(methods))
    return [m for m in SHOWN if m in present] + [m for m in present if m not in SHOWN]


def line_of(method: str, variants: Sequence[str]) -> tuple[str, str]:
    if method in LINES:
        return LINES[method]
    return f"C{2 + variants.index(method) % 8}", "-."


@dataclass
class TrialRecord:
    """One search trial: its start order within its seed, the best value so far after each
    epoch it ran (its last entry its best), and whether it diverged (then no candidate)."""

    dataset: str
    method: str
    seed: int
    order: int
    values: list[float]
    diverged: bool = False
    replayed: bool = False
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.values) + (1 if self.diverged else 0)

    @property
    def best(self) -> float:
        return np.nan if self.diverged or not self.values else self.values[-1]


def save_records(records: list[TrialRecord], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([dataclasses.asdict(r) for r in records]))


def load_records(path: Path) -> list[TrialRecord]:
    return [TrialRecord(**r) for r in json.loads(path.read_text())]


def with_every_seed(records: Sequence[TrialRecord]) -> tuple[list[TrialRecord], list[str]]:
    """The records of the methods run on every seed its dataset has (records of several runs
    pooled: a variant run on one set of seeds only is left out), and those left out."""
    seeds: dict[str, set[int]] = {}
    ran: dict[tuple[str, str], set[int]] = {}
    for r in records:
        seeds.setdefault(r.dataset, set()).add(r.seed)
        ran.setdefault((r.dataset, r.method), set()).add(r.seed)
    whole = {key for key, of in ran.items() if of == seeds[key[0]]}
    left_out = [f"{dataset} {method}" for dataset, method in ran if (dataset, method) not in whole]
    return [r for r in records if (r.dataset, r.method) in whole], left_out


# The numbers.
def group(records: Sequence[TrialRecord]) -> dict[tuple[str, str, int], list[TrialRecord]]:
    """Each (dataset, method, seed)'s trials in start order."""
    runs: dict[tuple[str, str, int], list[TrialRecord]] = {}
    for r in sorted(records, key=lambda r: r.order):
        runs.setdefault((r.dataset, r.method, r.seed), []).append(r)
    return runs


def anytime(trials: Sequence[TrialRecord], budget: int) -> np.ndarray:
    """The best value found after each epoch spent (1..budget), trials in start order and
    each epoch's best so far counting once it is reported; NaN before the first value, the
    last value after the last epoch."""
    found, best = [], np.nan
    for trial in trials:
        for value in trial.values:
            best = value if np.isnan(best) else max(best, value)
            found.append(best)
        if trial.diverged:
            found.append(best)
    curve = np.full(budget, found[-1] if found else np.nan)
    curve[: min(len(found), budget)] = found[:budget]
    return curve


def epochs_to(curve: np.ndarray, target: float) -> float:
    """The epochs spent when the best value first reaches ``target``; inf when never."""
    reached = np.flatnonzero(curve >= target - 1e-12)
    return float(reached[0] + 1) if reached.size else np.inf


def final_best(trials: Sequence[TrialRecord]) -> float:
    values = [t.best for t in trials if not np.isnan(t.best)]
    return max(values) if values else np.nan


def spent(trials: Sequence[TrialRecord]) -> int:
    return sum(t.epochs for t in trials)


@dataclass(frozen=True)
class Summary:
    """One dataset's numbers: per method the seeds' curves, finals and epochs to target."""

    dataset: str
    budget: int  # random alone's epochs: num_samples x max_epochs
    target: float  # random alone's final best, median over seeds
    curves: dict[str, np.ndarray]  # method -> seeds x budget
    finals: dict[str, dict[int, float]]  # method -> seed -> final best
    to_target: dict[str, np.ndarray]  # method -> epochs to target per seed (inf: never)
    epochs: dict[str, np.ndarray]  # method -> epochs spent per seed


def summarise(records: Sequence[TrialRecord], dataset: str, budget: int) -> Summary:
    runs = {k: v for k, v in group(records).items() if k[0] == dataset}
    methods = shown([k[1] for k in runs])
    seeds = sorted({k[2] for k in runs})
    finals = {m: {s: final_best(runs[dataset, m, s]) for s in seeds} for m in methods}
    target = float(np.nanmedian(list(finals[BASELINE].values())))
    curves = {m: np.array([anytime(runs[dataset, m, s], budget) for s in seeds]) for m in methods}
    to_target = {m: np.array([epochs_to(c, target) for c in curves[m]]) for m in methods}
    epochs = {m: np.array([spent(runs[dataset, m, s]) for s in seeds]) for m in methods}
    return Summary(dataset, budget, target, curves, finals, to_target, epochs)


def paired_against_random(summary: Summary, method: str, metric: str):
    """The final bests of ``method`` against random alone's, paired by seed, by the
    project's comparison (``analysis.stats.paired_comparison``): one row."""
    import pandas as pd

    from analysis.stats import Pairing, paired_comparison

    seeds = sorted(summary.finals[BASELINE])
    rows = {f"{m}:{s}": summary.finals[m][s] for m in (BASELINE, method) for s in seeds}
    values = pd.DataFrame({metric: pd.Series(rows)})
    pairs = pd.DataFrame(
        {
            "key": [str(s) for s in seeds],
            "baseline_run_id": [f"{BASELINE}:{s}" for s in seeds],
            "other_run_id": [f"{method}:{s}" for s in seeds],
            "split_seed": 0,
            "seed": seeds,
        }
    )
    pairing = Pairing("method", BASELINE, method, "the same seed", ("seed",), pairs)
    return paired_comparison(values, pairing, [metric]).iloc[0]


@dataclass(frozen=True)
class AshaCost:
    """How often ASHA stopped the trial that would have been its seed's best."""

    source: str  # which trials' curves, and how ASHA met them
    seeds: int
    best_stopped: int  # seeds whose best trial was (would have been) stopped
    stopped: int  # trials stopped, all seeds
    trials: int
    lost: float  # mean over seeds of (best without ASHA - best with), in points


def offline_asha(plan, trials: Sequence[TrialRecord], scheduler: str = "asha") -> dict[int, int]:
    """The tool's ASHA scheduler (``sweep.methods``) fed the complete curves of one seed's
    trials, one trial after the other in start order: the epoch each would be stopped at."""
    from ray.tune.schedulers import TrialScheduler

    from sweep.methods import SCHEDULERS
    from sweep.tally import tune_metric

    asha = SCHEDULERS.get(scheduler).make(plan)
    stops = {}
    for trial in trials:
        handle = _TrialHandle(f"{trial.order}")
        asha.on_trial_add(None, handle)
        for epoch, value in enumerate(trial.values, start=1):
            result = {"training_iteration": epoch, tune_metric(plan): value}
            if asha.on_trial_result(None, handle, result) == TrialScheduler.STOP:
                if epoch < plan.max_epochs:
                    stops[trial.order] = epoch
                break
    return stops


@dataclass(frozen=True)
class _TrialHandle:
    trial_id: str


def asha_offline_cost(
    plan, records: Sequence[TrialRecord], method: str, scheduler: str = "asha"
) -> AshaCost:
    runs = {k: v for k, v in group(records).items() if k[1] == method}
    best_stopped = stopped = trials = 0
    lost = []
    for trials_of in runs.values():
        stops = offline_asha(plan, trials_of, scheduler)
        best = max(trials_of, key=lambda t: -np.inf if np.isnan(t.best) else t.best)
        best_stopped += best.order in stops
        stopped += len(stops)
        trials += len(trials_of)
        kept = [t.values[stops[t.order] - 1] if t.order in stops else t.best for t in trials_of]
        lost.append(best.best - np.nanmax(kept))
    source = f"{method}'s complete curves, {scheduler} offline"
    return AshaCost(source, len(runs), best_stopped, stopped, trials, 100 * float(np.mean(lost)))


def asha_run_cost(records: Sequence[TrialRecord]) -> AshaCost:
    """Random+ASHA's own runs: its samplers draw random alone's configs in the same order,
    so random alone's best trial is the one of the same start order."""
    runs = group(records)
    seeds = [k for k in runs if k[1] == "random+asha" and (k[0], BASELINE, k[2]) in runs]
    best_stopped = stopped = trials = 0
    lost = []
    for dataset, _, seed in seeds:
        asha, alone = runs[dataset, "random+asha", seed], runs[dataset, BASELINE, seed]
        if [t.config for t in asha] != [t.config for t in alone]:
            raise ValueError(f"{dataset} seed {seed}: random+ASHA drew other configs")
        best = max(alone, key=lambda t: -np.inf if np.isnan(t.best) else t.best)
        stopped_orders = {
            a.order
            for a, t in zip(asha, alone, strict=True)
            if not a.diverged and len(a.values) < len(t.values)
        }
        best_stopped += best.order in stopped_orders
        stopped += len(stopped_orders)
        trials += len(asha)
        lost.append(final_best(alone) - final_best(asha))
    source = "random+ASHA's runs (random alone's configs)"
    return AshaCost(source, len(seeds), best_stopped, stopped, trials, 100 * float(np.mean(lost)))


# The tables.
def budgets(budget: int) -> list[int]:
    return sorted({max(1, round(budget * f)) for f in (1 / 12, 1 / 6, 1 / 3, 1 / 2, 1)})


def anytime_table(summary: Summary) -> str:
    cols = budgets(summary.budget)
    lines = [
        f"{summary.dataset}: best val_macro_f1 found after N epochs, median over "
        f"{len(summary.finals[BASELINE])} seeds (random alone's budget {summary.budget})",
        f"{'method':<21}" + "".join(f"{c:>8}" for c in cols) + f"{'spent':>8}",
    ]
    for method, curves in summary.curves.items():
        row = "".join(f"{np.nanmedian(curves[:, c - 1]):>8.3f}" for c in cols)
        lines.append(f"{method:<21}{row}{np.median(summary.epochs[method]):>8.0f}")
    return "\n".join(lines)


def reach_table(summary: Summary) -> str:
    """``curve``: the epochs at which the median over seeds of the best found first reaches
    the target (read off the figure); ``seeds``: the median over seeds of each seed's epochs
    to reach it (a seed that never does counts as infinitely many)."""
    lines = [
        f"{summary.dataset}: epochs to reach random alone's final median best "
        f"({summary.target:.3f}); ratio to random alone's {summary.budget} epochs",
        f"{'method':<21}{'curve':>7}{'ratio':>7}{'seeds':>7}{'ratio':>7}{'IQR':>12}"
        f"{'never':>7}{'spent':>7}",
    ]
    for method, reach in summary.to_target.items():
        curve = epochs_to(np.nanmedian(summary.curves[method], axis=0), summary.target)
        median = np.median(reach)
        with np.errstate(invalid="ignore"):  # a quartile between two nevers: never (nan)
            low, high = np.percentile(reach, [25, 75])
        lines.append(
            f"{method:<21}{_epochs(curve):>7}{_ratio(curve, summary.budget):>7}"
            f"{_epochs(median):>7}{_ratio(median, summary.budget):>7}"
            f"{f'{_epochs(low)}-{_epochs(high)}':>12}{int(np.isinf(reach).sum()):>7}"
            f"{np.median(summary.epochs[method]):>7.0f}"
        )
    return "\n".join(lines)


def _ratio(epochs: float, budget: int) -> str:
    return f"{epochs / budget:.2f}" if np.isfinite(epochs) else "-"


def _epochs(value: float) -> str:
    return f"{value:.0f}" if np.isfinite(value) else "never"


def comparison_table(summary: Summary, metric: str) -> str:
    lines = [
        f"{summary.dataset}: final best {metric}, each method - random alone, paired by seed",
        f"{'method':<21}{'mean':>7}{'diff':>8}{'95% bootstrap CI':>20}{'95% t CI':>20}  verdict",
    ]
    for method in summary.finals:
        if method == BASELINE:
            continue
        row = paired_against_random(summary, method, metric)
        boot = f"[{row.ci_low:+.3f}, {row.ci_high:+.3f}]"
        t = f"[{row.t_low:+.3f}, {row.t_high:+.3f}]"
        lines.append(
            f"{method:<21}{row.other_mean:>7.3f}{row.difference:>+8.3f}{boot:>20}{t:>20}"
            f"  {row.verdict}"
        )
    base = np.nanmean(list(summary.finals[BASELINE].values()))
    lines.append(f"{BASELINE:<21}{base:>7.3f}")
    return "\n".join(lines)


def asha_table(costs: Sequence[tuple[str, AshaCost]]) -> str:
    lines = [
        "ASHA's cost: seeds whose best trial it stopped (would have stopped) before the end",
        f"{'dataset':<14}{'best stopped':>14}{'trials stopped':>16}{'lost pts':>10}  source",
    ]
    for dataset, c in costs:
        lines.append(
            f"{dataset:<14}{f'{c.best_stopped}/{c.seeds}':>14}"
            f"{f'{c.stopped}/{c.trials}':>16}{c.lost:>10.2f}  {c.source}"
        )
    return "\n".join(lines)


# The figure.
def draw(summaries: Sequence[Summary], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(summaries), 4.0), layout="constrained")
    axes = figure.subplots(1, len(summaries), squeeze=False)[0]
    for ax, summary in zip(axes, summaries, strict=True):
        x = np.arange(1, summary.budget + 1)
        variants = [m for m in summary.curves if m not in LINES]
        for method, curves in summary.curves.items():
            colour, line = line_of(method, variants)
            ax.plot(x, np.nanmedian(curves, axis=0), colour, ls=line, label=method, lw=1.6)
        ax.axhline(summary.target, color="grey", ls=":", lw=1, label="random's final median")
        ax.axvline(summary.budget / 3, color="grey", ls="--", lw=0.8, label="1/3 of its epochs")
        ax.set(
            title=summary.dataset,
            xlabel="epochs spent (summed over trials, in start order)",
            ylabel="best val macro-F1 so far (median over seeds)",
        )
        early = [np.nanmedian(c[:, summary.budget // 12]) for c in summary.curves.values()]
        ax.set_ylim(np.nanmin(early) - 0.02, None)
        ax.legend(fontsize=8, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def shared_configs(records: Sequence[TrialRecord], dataset: str, one: str, other: str) -> str:
    """How many trials of ``one`` drew the config ``other`` drew at the same start order."""
    runs = group([r for r in records if r.dataset == dataset])
    same = total = 0
    for (_, method, seed), trials in runs.items():
        if method != one or (dataset, other, seed) not in runs:
            continue
        twins = {t.order: t.config for t in runs[dataset, other, seed]}
        same += sum(twins.get(t.order) == t.config for t in trials)
        total += len(trials)
    return f"{dataset}: {one} drew {other}'s config at the same start order in {same}/{total}"
