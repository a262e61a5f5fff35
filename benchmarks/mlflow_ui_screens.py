"""Screenshots of a sweep in the MLflow UI, taken by headless Chromium: a check by eye that
the URL the summary prints lands on the runs table, that the parent run shows the sweep's
answer, and that a trial run shows its system metrics and its dataset. Not part of CI.

It serves the store of a folder where ``tune.py`` ran (``mlflow.db`` and ``mlartifacts/``)
with ``mlflow server`` on a free local port, stopped at the end by its pid, and saves:

- ``1-runs-view.png``: the URL of the summary (``trainables.edge.tracking.runs_view_url``), as
  it lands; ``2-runs-expanded.png``: the same with the sweep's trials shown;
- ``3-parent-run.png``: the parent run's overview, its metrics and tags;
- ``4-system-metrics.png``: a search trial's system-metrics tab;
- ``5-dataset.png``: the same trial's overview with its dataset panel opened.

Needs Chromium and Playwright, which the project does not depend on::

    apt-get install -y chromium && pip install playwright
    python tune.py --space focal --num-samples 2 --max-epochs 2 --confirm-seeds 2  # in DIR
    python benchmarks/mlflow_ui_screens.py --store DIR --out /tmp/ui-shots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import mlflow_server  # noqa: E402
from trainables.edge import tracking  # noqa: E402

LOAD_TIMEOUT_MS = 90_000  # the UI's first load on a busy machine
SETTLE_MS = 3000  # the UI draws charts after their data arrives
EXPAND_BUTTON = "runnamecellrenderer.tsx_46"  # the runs table's button showing child runs


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, required=True, help="folder holding mlflow.db")
    p.add_argument("--experiment", default="focal", help="MLflow experiment (focal)")
    p.add_argument("--out", type=Path, default=Path("/tmp/ui-shots"), help="where PNGs go")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="the browser to drive")
    return p


def sweep_runs(uri: str, experiment: str) -> dict[str, Any]:
    """The experiment id, the latest sweep's parent run and one of its search runs."""
    client = tracking.client(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs(
        [experiment_id], "tags.role = 'sweep'", order_by=["start_time DESC"], max_results=1
    )
    children = tracking.child_runs(uri, experiment_id, parent.info.run_id)
    search = next(r for r in children if r.data.tags.get("role") == "search")
    return {"experiment_id": experiment_id, "parent": parent, "child": search}


def take_screenshots(base: str, runs: dict[str, Any], out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    parent, child = runs["parent"], runs["child"]
    runs_view = tracking.runs_view_url(base, runs["experiment_id"])  # as the summary prints it
    run_page = f"{base}/#/experiments/{runs['experiment_id']}/runs"
    mode = "?workflowType=machine_learning"
    dataset = child.inputs.dataset_inputs[0].dataset.name
    shots = [  # file, page, text to wait for, what to do before the picture
        ("1-runs-view.png", runs_view, parent.info.run_name, None),
        ("2-runs-expanded.png", runs_view, parent.info.run_name, _expand_parent),
        ("3-parent-run.png", f"{run_page}/{parent.info.run_id}{mode}", "arm.", None),
        (
            "4-system-metrics.png",
            f"{run_page}/{child.info.run_id}/system-metrics{mode}",
            "cpu_utilization_percentage",
            None,
        ),
        ("5-dataset.png", f"{run_page}/{child.info.run_id}{mode}", dataset, _open_dataset),
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        for name, url, text, action in shots:
            page.goto(url)
            page.get_by_text(text).first.wait_for(timeout=LOAD_TIMEOUT_MS)
            _close_assistant(page)
            if action is not None:
                action(page, dataset)
            page.wait_for_timeout(SETTLE_MS)  # charts draw after their data arrives
            page.screenshot(path=str(out / name), full_page=True)
            print(f"{out / name}: {page.url}")
        browser.close()


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its chat panel on a first visit; it covers a third of the page."""
    close = page.get_by_role("button", name="Close")
    if close.count() and close.first.is_visible():
        close.first.click()


def _expand_parent(page, dataset: str) -> None:
    page.locator(f"button[data-component-id$='{EXPAND_BUTTON}']").first.click()


def _open_dataset(page, dataset: str) -> None:
    """Click the run's dataset among its overview's details to open MLflow's dataset panel."""
    page.get_by_text(dataset).last.click()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (args.store / "mlflow.db").is_file():
        print(f"error: no mlflow.db in {args.store}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    runs = sweep_runs(f"sqlite:///{(args.store / 'mlflow.db').resolve()}", args.experiment)
    server = mlflow_server.start(args.store.resolve())
    try:
        mlflow_server.wait_until_up(server)
        take_screenshots(server.url, runs, args.out, args.chromium)
    finally:
        mlflow_server.stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
