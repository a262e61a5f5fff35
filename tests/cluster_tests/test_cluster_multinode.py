"""tune.py on a multi-node Ray cluster (three raylets on this machine, workers with simulated
GPUs) logging to a real MLflow server: where the trials ran, what reached the server, and the
requests refused before a sweep starts. Fixtures: conftest.py."""

from __future__ import annotations

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

SAMPLES, ARMS, CONFIRM_SEEDS = 3, ("focal", "ce"), 1
# Search trials keep the data of their best epoch; confirmation runs are also scored on test
# and draw their pictures.
CONFUSIONS = {
    "search": {f"confusion/{s}_confusion.csv" for s in ("train", "val")},
    "confirmation": {f"confusion/{s}_confusion.csv" for s in ("train", "val", "test")}
    | {f"confusion/{s}_confusion.png" for s in ("val", "test")},
}


@pytest.fixture(scope="module")
def sweep(stack, tune_cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("multinode-sweep")
    args = [
        "--space", "focal", "--address", stack.address, "--tracking-uri", stack.tracking_uri,
        "--gpus-per-trial", "1", "--num-samples", str(SAMPLES), "--max-epochs", "2",
        "--grace-period", "1", "--confirm-seeds", str(CONFIRM_SEEDS), "--max-concurrent", "3",
        "--storage-path", str(folder / "ray_results"), "--experiment", "multinode", "--quiet",
    ]  # fmt: skip
    result, seconds = tune_cli(args, cwd=folder, env=stack.env, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    client = MlflowClient(stack.tracking_uri)
    experiment = client.get_experiment_by_name("multinode")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("role") != "sweep"]
    trial_ids = {p.name.removeprefix("trial_") for p in (folder / "ray_results").glob("*/trial_*")}
    placement = [_placement(client, run) for run in children]
    _print_placement(placement, stack.gpus_by_node, seconds)
    return SimpleNamespace(
        client=client, experiment=experiment, children=children, trial_ids=trial_ids,
        placement=placement, stdout=result.stdout,
    )  # fmt: skip


def _placement(client: MlflowClient, run) -> SimpleNamespace:
    """Where a trial ran, and an interval inside its hold on the node's GPU: from its MLflow run's
    start (inside the trial) to its last logged metric (before its last report to Ray)."""
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    return SimpleNamespace(
        node=run.data.tags["ray_node_id"],
        trial=run.data.tags["ray_trial_id"],
        role=run.data.tags["role"],
        arm=run.data.tags["arm"],
        start=run.info.start_time,
        end=max(m.timestamp for m in history),
    )


def _most_at_once(intervals: list[tuple[int, int]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = most = 0
    for _, step in events:  # at equal times the end (-1) sorts first: touching is not overlap
        running += step
        most = max(most, running)
    return most


def _print_placement(placement, gpus_by_node: dict[str, float], seconds: float) -> None:
    t0 = min(p.start for p in placement)
    print(f"\nmulti-node sweep: {len(placement)} trials in {seconds:.0f} s")
    for node, gpus in sorted(gpus_by_node.items(), key=lambda kv: -kv[1]):
        mine = sorted((p for p in placement if p.node == node), key=lambda p: p.start)
        most = _most_at_once([(p.start, p.end) for p in mine])
        label = f"{gpus:g} GPU" + ("" if gpus == 1 else "s")
        print(f"  node {node[:8]} ({label}): {len(mine)} trials, at most {most} at once")
        for p in mine:
            span = f"{(p.start - t0) / 1000:6.1f}-{(p.end - t0) / 1000:6.1f} s"
            print(f"    trial {p.trial} {p.role:<12} {p.arm:<5} {span}")


def test_trials_ran_on_at_least_two_worker_nodes(sweep, stack):
    nodes = {p.node for p in sweep.placement}
    assert len(nodes) >= 2
    assert all(stack.gpus_by_node[n] >= 1 for n in nodes), "a trial ran on the GPU-less head"


def test_every_trial_has_its_child_run_and_confusions_on_the_server(sweep, stack):
    expected = SAMPLES * len(ARMS) + CONFIRM_SEEDS * len(ARMS)
    assert len(sweep.trial_ids) == expected  # Ray Tune's own record of the trials
    assert {p.trial for p in sweep.placement} == sweep.trial_ids
    assert sweep.experiment.artifact_location.startswith("mlflow-artifacts:")  # served
    for run in sweep.children:
        run_id = run.info.run_id
        listed = {a.path for a in sweep.client.list_artifacts(run_id, "confusion")}
        expected = CONFUSIONS[run.data.tags["role"]]
        assert listed == expected, run.info.run_name
        stored = stack.artifacts / sweep.experiment.experiment_id / run_id / "artifacts"
        assert all((stored / name).is_file() for name in expected)
    assert sweep.stdout.count(f"{SAMPLES} search trials") == len(ARMS)


def test_no_node_ran_more_trials_at_once_than_its_gpus(sweep, stack):
    by_node = defaultdict(list)
    for p in sweep.placement:
        by_node[p.node].append((p.start, p.end))
    most = {node: _most_at_once(intervals) for node, intervals in by_node.items()}
    for node, at_once in most.items():
        assert at_once <= stack.gpus_by_node[node], (node, at_once)
    # Some node ran trials side by side, so the check had something to catch.
    assert max(most.values()) >= 2


def test_a_trial_no_node_can_fit_is_refused_before_the_sweep(stack, tune_cli, tmp_path):
    args = [
        "--space", "focal", "--address", stack.address, "--tracking-uri", stack.tracking_uri,
        "--gpus-per-trial", "3", "--experiment", "refused", "--quiet",
    ]  # fmt: skip
    result, _ = tune_cli(args, cwd=tmp_path, env=stack.env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"tune.py: error: no node can ever fit a trial asking 3 GPUs and 1 CPU: the largest node "
        f"has 2 GPUs and 4 CPUs (alive node {_node_with(stack, 2)[:8]} at 127.0.0.1); lower "
        "--gpus-per-trial"
    ]
    assert MlflowClient(stack.tracking_uri).get_experiment_by_name("refused") is None


def _node_with(stack, gpus: float) -> str:
    return next(node for node, n in stack.gpus_by_node.items() if n == gpus)


def test_an_address_that_is_not_a_ray_cluster_is_refused_at_once(stack):
    from sweep.cluster import check_reachable
    from sweep.plan import UsageError

    check_reachable(stack.address)  # the GCS answers as gRPC does
    web = stack.tracking_uri.removeprefix("http://")  # an HTTP server, as the dashboard is
    with pytest.raises(UsageError, match=rf"^{web} \(--address {web}\) answers, but not as a Ray"):
        check_reachable(web, timeout=5)


def _plan(stack, **overrides) -> SimpleNamespace:
    """The fields of a SweepPlan that start_ray and the cluster checks read."""
    fields = dict(
        address=stack.address, quiet=True, verbose=False, num_cpus=None,
        tracking_uri=stack.tracking_uri,
        cpus_per_trial=1.0, gpus_per_trial=1.0,
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **overrides})


def test_autoscaler_node_types_count_for_the_check(stack):
    """A cluster that can still launch a 4-GPU node type accepts 4 GPUs per trial although no
    alive node has them (GCS cluster config, as some platforms report it)."""
    import ray
    from ray.core.generated import autoscaler_pb2

    from sweep.cluster import autoscaler_adds_nodes, check_cluster
    from sweep.plan import UsageError

    ray.init(address=stack.address, logging_level="WARNING", log_to_driver=False)
    gcs = ray._private.worker.global_worker.gcs_client
    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu-group", min_count=0, max_count=3)
    group.resources.update({"CPU": 8, "GPU": 4})
    try:
        assert not autoscaler_adds_nodes()  # the read-only autoscaler of a plain cluster
        gcs.report_cluster_config(config.SerializeToString())
        check_cluster(_plan(stack, gpus_per_trial=4.0))
        with pytest.raises(UsageError, match=r"has 4 GPUs and 8 CPUs \(node type gpu-group, "):
            check_cluster(_plan(stack, gpus_per_trial=8.0))
    finally:
        gcs.report_cluster_config(autoscaler_pb2.ClusterConfig().SerializeToString())
        ray.shutdown()


def test_every_node_gets_the_tracking_uri(stack, monkeypatch):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from sweep.ray_session import start_ray

    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    assert start_ray(_plan(stack)) is True

    @ray.remote(num_cpus=0)
    def seen() -> tuple[str, str | None]:
        return ray.get_runtime_context().get_node_id(), os.environ.get("MLFLOW_TRACKING_URI")

    try:
        refs = [
            seen.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
            for node in stack.gpus_by_node
        ]
        answers = dict(ray.get([r.remote() for r in refs], timeout=120))
    finally:
        ray.shutdown()
    assert answers == {node: stack.tracking_uri for node in stack.gpus_by_node}
