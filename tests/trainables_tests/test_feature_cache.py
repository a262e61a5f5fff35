import dataclasses
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from trainables import feature_cache
from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.engine import build_training_state, fit
from trainables.feature_cache import (
    FeatureCache,
    FeatureCacheWarning,
    feature_inputs,
    feature_name,
)
from trainables.models import SplitError, build_model, split_frozen

DEVICE = torch.device("cpu")
TRAIN_IMAGES = 200


def _digits(split_seed: int = 0):
    full = load_dataset("digits", DataOptions(split_seed=split_seed))
    # A few hundred images keep a ResNet-18 epoch at 32 px around a second.
    return dataclasses.replace(
        full, train_x=full.train_x[:TRAIN_IMAGES], train_y=full.train_y[:TRAIN_IMAGES]
    )


@pytest.fixture(scope="module")
def digits():
    return _digits()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A stand-in for pretrained ResNet-18 weights: any fixed state dict is one."""
    import torchvision

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return FeatureCache(tmp_path / "features", budget_bytes=2**30)


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(feature_cache, "_warned", set())


def _cfg(**overrides) -> TrialConfig:
    base = dict(backbone="smallcnn", freeze="backbone", lr=0.02, batch_size=32, max_epochs=2)
    return TrialConfig(**{**base, **overrides})


def _run(cfg: TrialConfig, data, cache: FeatureCache | None = None):
    return list(fit(cfg, data, DEVICE, cache=cache))


def _assert_same_run(cached, uncached) -> None:
    assert len(cached) == len(uncached)
    for a, b in zip(cached, uncached, strict=True):
        assert a.metrics.keys() == b.metrics.keys()
        for key, value in a.metrics.items():
            assert value == pytest.approx(b.metrics[key], rel=1e-5, abs=1e-6), key
        np.testing.assert_array_equal(a.val.y_pred, b.val.y_pred)
        np.testing.assert_allclose(a.val.embedding, b.val.embedding, rtol=1e-4, atol=1e-5)


CASES = {
    "smallcnn-backbone": dict(backbone="smallcnn", freeze="backbone"),
    "smallcnn-partial1": dict(backbone="smallcnn", freeze="partial:1"),
    "resnet18-backbone-dropout": dict(
        backbone="resnet18", freeze="backbone", dropout=0.3, image_size=32
    ),
    "resnet18-partial2": dict(backbone="resnet18", freeze="partial:2", image_size=32),
    "resnet18-svm": dict(backbone="resnet18", freeze="backbone", classifier="svm", image_size=32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_and_uncached_trials_give_the_same_numbers(case, digits, weights_file, cache):
    overrides = dict(CASES[case])
    if overrides["backbone"] == "resnet18":
        overrides["weights"] = weights_file
    cfg = _cfg(**overrides)
    cached = _run(cfg, digits, cache)
    assert (cache.computed, cache.read) == (2, 0)  # train and val, each computed once
    uncached = _run(cfg.replace(feature_cache=False), digits, cache)
    assert (cache.computed, cache.read) == (2, 0)
    _assert_same_run(cached, uncached)


def test_a_second_trial_with_the_same_key_reads_what_the_first_computed(
    digits, weights_file, cache
):
    cfg = _cfg(backbone="resnet18", weights=weights_file, image_size=32, max_epochs=1)
    first = _run(cfg, digits, cache)
    assert (cache.computed, cache.read) == (2, 0)
    # Another arm's optimizer and another seed: the frozen pretrained layers are the same.
    _run(cfg.replace(optimizer="adam", lr=1e-3, seed=7), digits, cache)
    again = _run(cfg, digits, cache)
    assert (cache.computed, cache.read) == (2, 4)
    assert len(list(cache.folder.glob("*.npy"))) == 2
    _assert_same_run(again, first)


def test_random_weights_give_each_seed_features_of_its_own(digits, cache):
    _run(_cfg(seed=0, max_epochs=1), digits, cache)
    _run(_cfg(seed=1, max_epochs=1), digits, cache)
    assert (cache.computed, cache.read) == (4, 0)


def _name(cfg: TrialConfig, data, split: str = "train") -> str:
    state = build_training_state(cfg, data, DEVICE)
    images = data.train_x if split == "train" else data.val_x
    return feature_name(cfg, state.model, DEVICE, split, images)


def test_the_key_changes_with_everything_the_features_depend_on(digits, weights_file, tmp_path):
    import torchvision

    torch.manual_seed(456)
    other_weights = tmp_path / "other.pth"
    torch.save(torchvision.models.resnet18().state_dict(), other_weights)
    base = _cfg(backbone="resnet18", weights=weights_file, image_size=32)
    name = _name(base, digits)
    assert _name(base.replace(seed=5, lr=0.5, dropout=0.2), digits) == name
    random = base.replace(weights="none")
    others = {
        "backbone": _name(random.replace(backbone="resnet50"), digits),
        "weights file": _name(base.replace(weights=str(other_weights)), digits),
        "split seed": _name(base, _digits(split_seed=1)),
        "input size": _name(base.replace(image_size=48), digits),
        "freeze spec": _name(base.replace(freeze="partial:2"), digits),
        "split": _name(base, digits, split="val"),
        "random weights": _name(random, digits),
        "random weights of another seed": _name(random.replace(seed=1), digits),
    }
    for what, other in others.items():
        assert other != name, what
    assert len(set(others.values())) == len(others)


def _imagenet_key(backbone: str, data):
    """The key of a backbone's ImageNet features, as a function; the model is built without
    those weights (nothing to download): the key reads the weights' identity off the config."""
    cfg = _cfg(backbone=backbone, weights="none", image_size=32)
    model = build_training_state(cfg, data, DEVICE).model
    pretrained = cfg.replace(weights="imagenet")
    return lambda: feature_name(pretrained, model, DEVICE, "train", data.train_x)


@pytest.mark.parametrize("backbone", ["timm:test_resnet", "resnet18"])
def test_the_key_of_imagenet_weights_changes_with_the_library_and_the_weights_tag(
    backbone, digits, monkeypatch
):
    """A new timm or torchvision may give other weights under the same name (a new default
    tag, DEFAULT moved to newer weights): their features must not be read as the old ones."""
    from trainables.backbones import _timm, _torchvision

    if backbone.startswith("timm:"):
        library = pytest.importorskip("timm")
        other = dataclasses.replace(_timm._pretrained_cfg("test_resnet"), tag="other_tag")
        retag = (_timm, "_pretrained_cfg", lambda arch: other)
    else:
        import torchvision as library

        retag = (_torchvision, "_default_weights", lambda arch: "ResNet18_Weights.IMAGENET1K_V9")
    key = _imagenet_key(backbone, digits)
    name = key()
    assert key() == name
    with monkeypatch.context() as patch:
        patch.setattr(library, "__version__", "0.0.1")
        assert key() != name, "the library's version"
    with monkeypatch.context() as patch:
        patch.setattr(*retag)
        assert key() != name, "the weights' tag"
    assert key() == name


@pytest.mark.parametrize(
    "overrides",
    [
        dict(augment=True),
        dict(freeze="none"),
        dict(feature_cache=False),
    ],
    ids=["augmented", "trainable-backbone", "switched-off"],
)
def test_trials_that_cannot_share_features_never_touch_the_cache(overrides, digits, cache):
    cfg = _cfg(max_epochs=1, **overrides)
    state = build_training_state(cfg, digits, DEVICE)
    assert feature_inputs(cfg, digits, state.model, DEVICE, cache) is None
    _run(cfg, digits, cache)
    assert (cache.computed, cache.read) == (0, 0)
    assert not cache.folder.exists()


def test_features_over_the_budget_run_uncached_and_say_so_once(digits, tmp_path):
    small = FeatureCache(tmp_path / "features", budget_bytes=1024)
    cfg = _cfg(freeze="partial:1")
    with pytest.warns(FeatureCacheWarning, match=r"GiB, over the feature cache's"):
        over = _run(cfg, digits, small)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FeatureCacheWarning)
        _run(cfg, digits, small)
    assert (small.computed, small.read) == (0, 0)
    _assert_same_run(over, _run(cfg.replace(feature_cache=False), digits))


def test_resuming_a_cached_trial_gives_the_same_run(digits, cache):
    # No dropout: a checkpoint holds the batch order's generator, not the global one that
    # dropout draws from, so with dropout no resumed run repeats the straight one exactly.
    cfg = _cfg(freeze="partial:1", max_epochs=2)
    straight = _run(cfg.replace(feature_cache=False), digits)
    first = cfg.replace(max_epochs=1)
    state = build_training_state(first, digits, DEVICE)
    list(fit(first, digits, DEVICE, state, cache=cache))
    resumed = build_training_state(cfg, digits, DEVICE)
    resumed.load_state_dict(state.state_dict())
    rest = list(fit(cfg, digits, DEVICE, resumed, cache=cache))
    assert (cache.computed, cache.read) == (2, 2)
    assert [o.epoch for o in rest] == [2]
    _assert_same_run(rest, straight[1:])


@pytest.mark.parametrize(
    "backbone, stages", [("smallcnn", 2), ("resnet18", 5)], ids=["smallcnn", "resnet18"]
)
def test_every_partial_freeze_cuts_into_frozen_layers_and_the_rest(backbone, stages):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for k in range(1, stages + 1):
        model = build_model(
            backbone=backbone,
            weights="none",
            num_classes=10,
            in_channels=3,
            data_size=32,
            freeze=f"partial:{k}",
        ).eval()
        split = split_frozen(model)
        with torch.no_grad():
            np.testing.assert_array_equal(split.rest(split.frozen(x)), model.backbone(x))
        frozen = {id(p) for m in model.frozen for p in m.parameters()}
        assert {id(p) for p in split.frozen.parameters()} == frozen, k
        trainable = {id(p) for p in model.backbone.parameters() if p.requires_grad}
        assert {id(p) for p in split.rest.parameters()} == trainable, k


def test_a_trainable_layer_before_a_frozen_one_cannot_be_cut_and_trains_uncached(digits, cache):
    cfg = _cfg(freeze="partial:2", max_epochs=1)
    state = build_training_state(cfg, digits, DEVICE)
    state.model.frozen = [state.model.backbone.block2]  # block1 trains, yet runs first
    with pytest.raises(SplitError, match="block1"):
        split_frozen(state.model)
    with pytest.warns(FeatureCacheWarning, match="training uncached"):
        assert feature_inputs(cfg, digits, state.model, DEVICE, cache) is None


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from trainables.feature_cache import FeatureCache

    folder, go = Path(sys.argv[1]), Path(sys.argv[2])
    rows, chunk, seconds, hang = (int(a) for a in sys.argv[3:7])
    filled = []

    def fill(out, part):
        print("filling", part.start // chunk, flush=True)
        time.sleep(3600 if part.start // chunk == hang else seconds)
        out[part] = np.arange(part.start, part.stop)[:, None]
        filled.append(part.start // chunk)

    print("ready", flush=True)
    while not go.exists():  # both start together, imports done
        time.sleep(0.01)
    cache = FeatureCache(folder, budget_bytes=2**20)
    array = cache.load_or_compute("same-key", (rows, 3), fill, chunk=chunk)
    assert (array == np.arange(rows)[:, None]).all(), array
    print("done", cache.computed, cache.read, *filled, flush=True)
    """
)


def _writer(tmp_path, go: str, rows: int, chunk: int, seconds: float = 1, hang: int = -1):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [str(tmp_path / "features"), str(tmp_path / go), rows, chunk, seconds, hang]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, *map(str, args)], stdout=subprocess.PIPE, env=env, text=True
    )
    assert writer.stdout.readline().strip() == "ready"
    return writer


def _finish(writer: subprocess.Popen) -> list[str]:
    out = writer.communicate(timeout=120)[0].splitlines()
    assert writer.returncode == 0
    return out[-1].split()[1:]  # computed, read, the chunks it filled


def _assert_no_partial_files(folder):
    assert [p.name for p in folder.iterdir() if p.suffix == ".npy"] == ["same-key.npy"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_two_processes_computing_the_same_features_compute_once_and_write_one_file(tmp_path):
    writers = [_writer(tmp_path, "go", rows=4, chunk=256) for _ in range(2)]
    (tmp_path / "go").touch()
    outputs = sorted(_finish(w) for w in writers)
    assert outputs == [["0", "1"], ["1", "0", "0"]]  # one chunk: one computes, one reads
    _assert_no_partial_files(tmp_path / "features")


def test_processes_that_need_the_same_features_share_the_chunks_between_them(tmp_path):
    writers = [_writer(tmp_path, "go", rows=8, chunk=2) for _ in range(2)]
    (tmp_path / "go").touch()
    outputs = [_finish(w) for w in writers]
    assert [out[:2] for out in outputs] == [["1", "0"], ["1", "0"]]  # both helped
    chunks = sorted(int(c) for out in outputs for c in out[2:])
    assert chunks == [0, 1, 2, 3]  # each chunk computed once, by one of them
    _assert_no_partial_files(tmp_path / "features")


def test_a_chunk_whose_process_is_killed_is_computed_by_another(tmp_path):
    stuck = _writer(tmp_path, "go", rows=8, chunk=2, seconds=0, hang=0)
    (tmp_path / "go").touch()
    assert stuck.stdout.readline().split() == ["filling", "0"]  # holds chunk 0, never ends
    other = _writer(tmp_path, "go", rows=8, chunk=2, seconds=0)
    assert [other.stdout.readline().split() for _ in range(3)] == [
        ["filling", str(c)] for c in (1, 2, 3)
    ]
    stuck.kill()
    stuck.wait(timeout=30)
    assert _finish(other) == ["1", "0", "1", "2", "3", "0"]  # it waited for 0, then took it
    _assert_no_partial_files(tmp_path / "features")


@pytest.mark.parametrize("switch, expected", [([], True), (["--no-feature-cache"], False)])
def test_a_frozen_backbone_sweep_validates_and_carries_the_switch_to_every_trial(
    switch, expected, weights_file, tmp_path
):
    from sweep.options import parse_args
    from sweep.plan import build_plan

    argv = ["--space", "freeze", "--arms", "backbone", "--weights", weights_file]
    plan = build_plan(parse_args([*argv, "--storage-path", str(tmp_path), *switch]))
    assert plan.fixed["feature_cache"] is expected
    assert TrialConfig.from_dict({**plan.fixed, "freeze": "backbone"}).feature_cache is expected


# --- what a trial says of the cache: its run's tag and its reports to Ray ---------------------


@pytest.fixture
def fake_ray(monkeypatch):
    """``train_trial`` without Ray: the metrics of every report."""
    from types import SimpleNamespace

    import ray

    from trainables.edge import trial

    reports: list[dict] = []
    fake = SimpleNamespace(
        get_checkpoint=lambda: None,
        get_context=lambda: SimpleNamespace(get_trial_id=lambda: None),
        report=lambda metrics, checkpoint=None: reports.append(metrics),
        Checkpoint=SimpleNamespace(from_directory=lambda folder: None),
    )
    monkeypatch.setattr(trial, "tune", fake)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=str))
    return reports


def _trial_note(cfg: TrialConfig, data, store, fake_ray) -> tuple[str | None, list]:
    """The run's ``feature_cache`` tag and the values Ray heard under that key."""
    from trainables import contract
    from trainables.edge import tracking
    from trainables.edge.trial import train_trial

    train_trial(cfg.to_dict(), data=data, tracking=store)
    (run,) = tracking.child_runs(store.uri, store.experiment_id, store.parent_run_id)
    heard = [report.get(contract.FEATURE_CACHE_TAG) for report in fake_ray]
    return run.data.tags.get(contract.FEATURE_CACHE_TAG), heard


@pytest.mark.parametrize(
    ("cfg", "budget_gib", "note"),
    [
        (_cfg(), "2", "used"),
        (_cfg(freeze="partial:1"), "0.001", "uncached: the frozen output of smallcnn (partial:1)"),
        (_cfg(freeze="none"), "2", None),
        (_cfg(augment=True), "2", None),
    ],
    ids=["used", "over-the-budget", "trainable", "augmented"],
)
def test_a_trial_tags_its_run_and_tells_ray_whether_it_trained_on_cached_features(
    cfg, budget_gib, note, digits, store, fake_ray, tmp_path, monkeypatch
):
    monkeypatch.setenv(feature_cache.FOLDER_ENV, str(tmp_path / "features"))
    monkeypatch.setenv(feature_cache.BUDGET_ENV, budget_gib)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always", FeatureCacheWarning)
        tag, heard = _trial_note(cfg, digits, store, fake_ray)
    uncached = note is not None and note.startswith("uncached")
    assert [w.category for w in warned if w.category is FeatureCacheWarning] == [
        FeatureCacheWarning
    ] * uncached  # the worker's log says it too, once
    assert len(heard) == cfg.max_epochs
    if note is None:
        assert tag is None and heard == [None, None]
    else:
        assert tag.startswith(note) and heard == [tag, tag]
    if uncached:
        budget = f"over the feature cache's 0.001 GiB (${feature_cache.BUDGET_ENV})"
        assert " for train, val would take " in tag and tag.endswith(budget)
        assert not (tmp_path / "features").exists()


def test_a_diverged_trial_still_says_it_trained_uncached(digits, store, fake_ray, monkeypatch):
    monkeypatch.setenv(feature_cache.BUDGET_ENV, "1e-6")
    tag, heard = _trial_note(_cfg(lr=1e12, freeze="partial:1"), digits, store, fake_ray)
    assert fake_ray[-1]["diverged"] == 1
    assert tag.startswith("uncached: the frozen output") and heard[-1] == tag


def test_a_confirmation_run_whose_test_split_is_over_the_budget_says_so(
    digits, store, fake_ray, tmp_path, monkeypatch
):
    """Train and val fit the budget, and the test scoring that ends the run does not: the
    epochs train on cached features, the test split is scored uncached, and the run says so."""
    search = _cfg(max_epochs=1)
    monkeypatch.setenv(feature_cache.FOLDER_ENV, str(tmp_path / "sized"))
    list(fit(search, digits, DEVICE))  # the train and val features, to size the budget
    fitting = sum(f.stat().st_size for f in (tmp_path / "sized").glob("*.npy"))  # headers too
    monkeypatch.setenv(feature_cache.FOLDER_ENV, str(tmp_path / "features"))
    monkeypatch.setenv(feature_cache.BUDGET_ENV, str(fitting / 2**30))
    confirmation = search.replace(role="confirmation", max_epochs=2)
    tag, heard = _trial_note(confirmation, digits, store, fake_ray)
    assert tag.startswith("used; test uncached: the frozen output of smallcnn (backbone) for ")
    assert "for train, val, test would take" in tag
    assert heard == ["used", tag]  # the last report comes after the test scoring
    assert len(list((tmp_path / "features").glob("*.npy"))) == 2
