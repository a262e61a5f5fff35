"""What a run shows in the MLflow UI: its dataset input, system metrics, names, the hardware
settings that took effect, metric keys MLflow accepts, and the URL of the runs table."""

import json
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import _validate_metric_name

from trainables import contract
from trainables.config import TrialConfig, numbered_run_name, trial_number
from trainables.data import DataOptions, ImageData, load_dataset, resplit
from trainables.edge import tracking


def _data(labels=(0, 0, 1, 2, 2, 2)) -> ImageData:
    y = torch.tensor(labels)
    x = torch.arange(len(y) * 4, dtype=torch.uint8).reshape(len(y), 1, 2, 2)
    return ImageData("tiny", ("a", "b", "c"), x, y, x[:2].clone(), y[:2].clone())


def _store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "views")
    return uri, experiment_id


def test_the_digest_follows_pixels_labels_and_split_and_nothing_else():
    digest = tracking.dataset_record(_data(), "tiny").digest
    assert tracking.dataset_record(_data(), "elsewhere").digest == digest
    relabelled = tracking.dataset_record(_data((0, 0, 1, 2, 2, 1)), "tiny").digest
    assert relabelled != digest and len(digest) == 16
    moved = _data()
    moved.train_x[0, 0, 0, 0] += 1
    assert tracking.dataset_record(moved, "tiny").digest != digest


def test_a_confirmation_run_on_another_split_gets_its_own_digest_and_counts():
    data = load_dataset("digits-lt", DataOptions(split_seed=0))
    record = tracking.dataset_record(data, "digits-lt")
    assert record.for_split(data) is record
    other = resplit(data, 1)
    again = record.for_split(other)
    assert again.digest != record.digest and again.digest == record.for_split(other).digest
    profile = json.loads(again.profile)
    assert profile["split_seed"] == 1
    assert list(profile["val_class_counts"].values()) == other.class_counts("val").tolist()
    assert profile["test_class_counts"] == json.loads(record.profile)["test_class_counts"]


def test_runs_get_the_dataset_as_an_input_with_class_counts_per_split(tmp_path):
    uri, experiment_id = _store(tmp_path)
    record = tracking.dataset_record(_data(), "imagefolder:/data/tiny")
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {}, dataset=record)
    child = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name="c",
        tags={"ray_trial_id": "t1"},
        params={},
        dataset=record,
    )
    for run_id in (parent, child.run_id):
        (found,) = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
        assert (found.dataset.name, found.dataset.digest) == ("tiny", record.digest)
        assert json.loads(found.dataset.source) == {"uri": "imagefolder:/data/tiny"}
        assert [(t.key, t.value) for t in found.tags] == [("mlflow.data.context", "training")]
        profile = json.loads(found.dataset.profile)
        assert profile["train_class_counts"] == {"a": 2, "b": 1, "c": 3}
        assert profile["val_class_counts"] == {"a": 2, "b": 0, "c": 0}
        features = json.loads(json.loads(found.dataset.schema)["mlflow_tensorspec"]["features"])
        assert features[0]["tensor-spec"] == {"dtype": "uint8", "shape": [-1, 1, 2, 2]}


def test_system_metrics_are_sampled_until_the_trial_stops_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri, experiment_id = _store(tmp_path)
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    run = tracking.TrialRun.open(
        uri, experiment_id=experiment_id, parent_run_id=parent, run_name="c", tags={}, params={}
    )
    used = [psutil.virtual_memory().used / 1e6]
    run.start_system_metrics()
    time.sleep(1.5)
    used.append(psutil.virtual_memory().used / 1e6)
    try:
        raise SystemExit  # how Ray ends a trial it stops, inside tune.report
    except SystemExit:
        pass
    finally:
        run.stop_system_metrics()
    client = MlflowClient(uri)
    cpu = client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 3 and [m.step for m in cpu] == list(range(len(cpu)))
    memory = client.get_metric_history(run.run_id, "system/system_memory_usage_megabytes")
    assert 0.8 * min(used) <= memory[-1].value <= 1.2 * max(used)
    time.sleep(0.5)  # stopped: nothing more arrives
    assert len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) == len(
        cpu
    )
    run.end()  # a second stop is harmless


def test_a_trial_shorter_than_one_sample_interval_still_gets_its_samples(tmp_path):
    uri, experiment_id = _store(tmp_path)
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    run = tracking.TrialRun.open(
        uri, experiment_id=experiment_id, parent_run_id=parent, run_name="c", tags={}, params={}
    )
    run.start_system_metrics()  # samples every SYSTEM_METRICS_INTERVAL_S = 2 s
    time.sleep(0.2)
    run.end()
    cpu = MlflowClient(uri).get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in cpu] == [0, 1]  # at the start, and what was left at the end


def test_hardware_settings_are_logged_as_they_act_on_the_device():
    cfg = TrialConfig(amp=True, channels_last=True)
    assert (cfg.effective_on("cpu").amp, cfg.effective_on("cpu").channels_last) == (False, False)
    assert (cfg.effective_on("cuda").amp, cfg.effective_on("cuda").channels_last) == (True, True)
    assert TrialConfig(amp=False).effective_on("cuda").amp is False
    assert cfg.effective_on("cpu").replace(amp=True, channels_last=True) == cfg


def test_run_names_lead_with_arm_and_role():
    confirm = TrialConfig(factor="loss", arm="focal", loss="focal", role="confirmation", seed=3)
    assert confirm.run_name == "loss=focal confirm s3"
    search = TrialConfig(
        factor="freeze", arm="partial:2", freeze="partial:2", lr=3e-3, batch_size=32, gamma=1.5
    )
    assert search.run_name == "freeze=partial:2 search · smallcnn sgd lr 3e-03 bs 32 gamma 1.5"
    numbered = numbered_run_name(search.run_name, 12)
    assert numbered == "freeze=partial:2 search #12 · smallcnn sgd lr 3e-03 bs 32 gamma 1.5"
    assert numbered_run_name(numbered, 13) == numbered
    assert numbered_run_name(confirm.run_name, 4) == confirm.run_name
    # The number read back: the order the arm's trials started in (analysis.anytime).
    assert trial_number(numbered) == 12
    assert trial_number(search.run_name) is None and trial_number(confirm.run_name) is None


@pytest.mark.parametrize("arm", ["focal", "partial:2", "0.5", "a/b", "x y", "weighted-ce", "é"])
def test_arm_names_become_metric_keys_mlflow_accepts(arm):
    part = contract.metric_part(arm)
    for key in (f"arm.{part}.confirm_mean", f"answer.{part}_vs_{part}.ci_low"):
        _validate_metric_name(key)
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", key)
    assert part.count(".") == 0


def test_the_runs_view_url_is_a_route_of_the_installed_mlflow_ui():
    local = tracking.runs_view_url("sqlite:////tmp/mlflow.db", "7")
    assert local == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    server = tracking.runs_view_url("https://mlflow.example.org/team/", "7")
    assert server == local.replace("http://127.0.0.1:5000", "https://mlflow.example.org/team")
    assert tracking.ui_command("https://mlflow.example.org") is None
    command = tracking.ui_command("sqlite:////tmp/m.db")
    assert command == "mlflow ui --backend-store-uri sqlite:////tmp/m.db"
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    main = next(bundle.glob("main.*.js")).read_text(errors="replace")
    assert '"/experiments/:experimentId/runs"' in main
    assert 'MACHINE_LEARNING="machine_learning"' in main and "workflowType" in main
    assert '"custom_model_development"' in main  # the experiment kind ensure_experiment sets


def test_new_experiments_are_marked_as_model_training(tmp_path):
    uri, experiment_id = _store(tmp_path)
    tags = MlflowClient(uri).get_experiment(experiment_id).tags
    assert tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_parent_metrics_are_logged_once_each(tmp_path):
    uri, experiment_id = _store(tmp_path)
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    values = {f"m{i}": float(i) for i in range(tracking.METRICS_PER_BATCH + 5)}
    tracking.log_metrics(uri, parent, values)
    assert MlflowClient(uri).get_run(parent).data.metrics == values
    assert np.isfinite(list(values.values())).all()


def test_the_names_of_the_sweeps_view_are_those_docs_tracking_md_gives():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "tracking.md").read_text()
    spans = " ".join(re.findall(r"`([^`]+)`", doc))
    names = [
        *(contract.ARM_METRIC.format(arm="{arm}", name=m) for m in contract.ARM_METRICS),
        contract.COMPARISON_METRIC,
        contract.COMPARISON_METRIC.format(
            best="{best}", other="{other}", name=contract.VERDICT_NAME
        ),
        *(f"`{m}`" for m in contract.COMPARISON_METRICS),
        contract.TRIALS_METRIC,
        *contract.TRIAL_ROLES,
        contract.DATASET_CONTEXT,
        f"{tracking.EXPERIMENT_KIND_TAG}={tracking.EXPERIMENT_KIND}",
        tracking.RUNS_VIEW.split("#", 1)[1].replace("{experiment_id}", "<id>"),
        "system/cpu_utilization_percentage",
    ]
    quoted = " ".join(f"`{span}`" for span in re.findall(r"`([^`]+)`", doc))
    assert [n for n in names if n not in spans and n not in quoted] == []


@pytest.mark.parametrize("arm", ["focal", "partial:2", "0.5", "a/b", "x y", "weighted-ce", "é"])
def test_the_answers_keys_keep_arms_apart_as_one_segment(arm):
    assert contract.arm_metric(arm, "confirm_mean").count(".") == 2
    key = contract.comparison_metric(arm, "ce", "diff")
    assert key.startswith("answer.") and key.endswith("_vs_ce.diff") and key.count(".") == 2
    assert contract.trials_metric("search", "stopped_early") == "trials.search.stopped_early"
