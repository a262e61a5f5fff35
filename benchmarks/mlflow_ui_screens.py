"""Screenshots of a sweep in the MLflow UI, taken by headless Chromium: a check by eye that
the URL the summary prints lands on the runs table, that the parent run shows the sweep's
answer, and that a trial run shows its system metrics and its dataset. Not part of CI.

It serves the store of a folder where ``tune.py`` ran (``mlflow.db`` and ``mlartifacts/``)
with ``mlflow server`` on a free local port, stopped at the end by its pid, and saves:

- ``1-runs-view.png``: the URL of the summary (``trainables.tracking.runs_view_url``);
- ``2-parent-run.png``: the parent run's overview, its metrics and tags;
- ``3-system-metrics.png``: a search trial's system-metrics tab;
- ``4-dataset.png``: the same trial's overview with its dataset panel opened.

Needs Chromium and Playwright, which the project does not depend on::

    apt-get install -y chromium && pip install playwright
    python tune.py --space focal --num-samples 2 --max-epochs 2 --confirm-seeds 2  # in DIR
    python benchmarks/mlflow_ui_screens.py --store DIR --out /tmp/ui-shots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import mlflow_server  # noqa: E402
from trainables import tracking  # noqa: E402

SETTLE_MS = 4000  # the UI fetches runs and draws charts after the page loads


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True, help="folder holding mlflow.db")
    p.add_argument("--experiment", default="focal", help="MLflow experiment (focal)")
    p.add_argument("--out", type=Path, default=Path("/tmp/ui-shots"), help="where PNGs go")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    return p


def sweep_runs(uri: str, experiment: str) -> tuple[str, str, str]:
    """The experiment id, the latest sweep's parent run id and one of its search runs."""
    client = tracking.client(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs(
        [experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1
    )
    children = tracking.child_runs(uri, experiment_id, parent.info.run_id)
    search = next(r for r in children if r.data.tags.get("role") == "search")
    return experiment_id, parent.info.run_id, search.info.run_id


def take_screenshots(base: str, ids: tuple[str, str, str], out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    experiment_id, parent, child = ids
    run_page = f"{base}/#/experiments/{experiment_id}/runs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        shots = [
            ("1-runs-view.png", tracking.runs_view_url(base, experiment_id)),
            ("2-parent-run.png", f"{run_page}/{parent}"),
            ("3-system-metrics.png", f"{run_page}/{child}/system-metrics"),
            ("4-dataset.png", f"{run_page}/{child}"),
        ]
        for name, url in shots:
            page.goto(url)
            page.wait_for_timeout(SETTLE_MS)
            if name == "4-dataset.png":
                _open_dataset_panel(page)
            page.screenshot(path=str(out / name), full_page=True)
            print(f"{out / name}: {page.url}")
        browser.close()


def _open_dataset_panel(page) -> None:
    """Click the run's dataset (its name, in the overview's table) to open MLflow's panel."""
    link = page.get_by_text("digits", exact=False).first
    if link.count():
        link.click()
        page.wait_for_timeout(SETTLE_MS // 2)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (args.store / "mlflow.db").is_file():
        print(f"error: no mlflow.db in {args.store}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    ids = sweep_runs(f"sqlite:///{(args.store / 'mlflow.db').resolve()}", args.experiment)
    server = mlflow_server.start(args.store.resolve())
    try:
        mlflow_server.wait_until_up(server)
        take_screenshots(server.url, ids, args.out, args.chromium)
    finally:
        mlflow_server.stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
