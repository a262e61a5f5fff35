"""The served model (``trainables.edge.served_model``) against the training code it stands in for:
the same network for every backbone, the same image reading, and the predictions of the
in-memory model on images of any size and on files, for single-label, multi-label and SVM
classifiers. No MLflow store here: test_model_export.py logs and loads through MLflow."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.bad_images import add_bad_files, write_image
from trainables.config import TrialConfig
from trainables.data import (
    DataOptions,
    ImageData,
    image_files,
    limit_train,
    load_dataset,
    read_image,
    resize_uint8,
)
from trainables.edge import served_model
from trainables.edge.model_export import refit_svm, served_spec, served_weights
from trainables.edge.served_model import ImageClassifierModel, Network
from trainables.engine import build_training_state, evaluate, fit
from trainables.models import build_model

CPU = torch.device("cpu")


def _tiny_data(channels: int, size: int, n: int = 40, classes: int = 3) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)
    y = torch.arange(n) % classes
    names = tuple(f"c{i}" for i in range(classes))
    return ImageData("tiny", names, x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :])


def _trained(cfg: TrialConfig, data: ImageData):
    """The state after ``cfg.max_epochs`` epochs, and the last epoch's outcome."""
    torch.manual_seed(0)
    state = build_training_state(cfg, data, CPU)
    outcomes = list(fit(cfg, data, CPU, state))
    return state, outcomes[-1]


def _served(state, cfg: TrialConfig, data: ImageData, folder) -> ImageClassifierModel:
    """The served model as MLflow would load it, from the weights and spec the export writes."""
    spec = served_spec(state.model, cfg, data)
    svm = refit_svm(state, cfg, data) if cfg.classifier == "svm" else None
    weights, spec_file = folder / "weights.pt", folder / "spec.json"
    torch.save(served_weights(state.model, svm), weights)
    spec_file.write_text(json.dumps(spec.to_config()))
    model = ImageClassifierModel()
    artifacts = {
        served_model.WEIGHTS_ARTIFACT: str(weights),
        served_model.SPEC_ARTIFACT: str(spec_file),
    }
    model.load_context(SimpleNamespace(artifacts=artifacts))
    return model


def _probs(frame) -> np.ndarray:
    return frame.filter(like=served_model.PROB_PREFIX).to_numpy()


@torch.no_grad()
def _in_memory(state, images: torch.Tensor, multilabel: bool = False) -> np.ndarray:
    state.model.eval()
    logits = state.model(images)
    return (logits.sigmoid() if multilabel else logits.softmax(dim=1)).numpy()


# The original five, and a family each for the classifier rules: kept layers (ConvNeXt's norm,
# SqueezeNet's pool), a head of several layers (MobileNetV3), no auxiliary heads (GoogLeNet).
REBUILT = (
    *("densenet121", "resnet18", "resnet50", "smallcnn", "vgg16"),
    *("convnext_tiny", "squeezenet1_0", "mobilenet_v3_small", "googlenet"),
    "regnet_x_400mf",  # built as usual: its constructor cannot run on the meta device
)


@pytest.mark.parametrize("backbone", REBUILT)
def test_every_backbone_is_rebuilt_module_for_module_with_the_same_outputs(backbone):
    torch.manual_seed(0)
    data = _tiny_data(channels=1, size=8)
    model = build_model(
        backbone=backbone,
        weights="none",
        num_classes=3,
        in_channels=1,
        data_size=8,
        head_hidden=(16,),
        freeze="backbone",
        data_mean=[0.4],
        data_std=[0.3],
    ).eval()
    spec = served_spec(model, TrialConfig(backbone=backbone), data)
    network = served_model.load_network(spec, served_weights(model)["network"])  # strict
    assert not any(t.is_meta for t in (*network.parameters(), *network.buffers()))
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = model(images)
        got = network.eval()(images)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_the_served_network_takes_its_weights_without_drawing_random_ones(monkeypatch):
    """VGG-16's random initialisation took 2 s of its 2.05 s build: loading a served model
    skips it, and still gives every value the weights hold."""
    model = build_model(
        backbone="vgg11", weights="none", num_classes=3, in_channels=3, data_size=32
    ).eval()
    spec = served_spec(model, TrialConfig(backbone="vgg11"), _tiny_data(channels=3, size=32))
    weights = served_weights(model)["network"]
    draws = []  # the devices of the tensors drawn: none on the meta device costs anything
    original = torch.nn.init.kaiming_normal_
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda t, **_: draws.append(t.device))
    network = served_model.load_network(spec, weights)
    assert torch.device("cpu") not in draws
    draws.clear()
    Network(spec)  # the control: building as usual draws them
    assert draws == [torch.device("cpu")] * 8  # one per convolution of VGG-11
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", original)
    for key, value in network.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_the_frozen_backbone_is_in_the_served_weights_though_not_in_checkpoints():
    model = build_model(
        backbone="smallcnn",
        weights="none",
        num_classes=3,
        in_channels=1,
        data_size=8,
        freeze="backbone",
    )
    checkpointed = set(model.trained_state_dict())
    served = set(served_weights(model)["network"])
    frozen = {k for k in served if k.startswith("backbone.")}
    assert frozen and not frozen & checkpointed
    assert served == checkpointed | frozen


@pytest.mark.parametrize("channels", [1, 3])
def test_files_are_read_as_the_training_loader_reads_them(tmp_path, channels):
    rng = np.random.default_rng(0)
    files = {
        "rgba.png": Image.fromarray(rng.integers(0, 256, (30, 20, 4), np.uint8), "RGBA"),
        "grey.png": Image.fromarray(rng.integers(0, 256, (9, 13), np.uint8), "L"),
        "rgb.jpg": Image.fromarray(rng.integers(0, 256, (40, 40, 3), np.uint8), "RGB"),
    }
    spec = served_spec(*_model_and_data(channels, size=16))
    for name, image in files.items():
        image.save(tmp_path / name)
        expected = read_image(tmp_path / name, 16, channels).numpy()
        np.testing.assert_array_equal(served_model.read_image(tmp_path / name, spec), expected)


def _model_and_data(channels: int, size: int):
    data = _tiny_data(channels, size)
    model = build_model(
        backbone="smallcnn",
        weights="none",
        num_classes=3,
        in_channels=channels,
        data_size=size,
    )
    return model, TrialConfig(), data


def test_arrays_of_another_size_are_resized_as_a_dataset_is():
    images = torch.randint(0, 256, (3, 1, 21, 21), dtype=torch.uint8)
    torch.testing.assert_close(served_model.resize_uint8(images, 8), resize_uint8(images, 8))
    assert served_model.resize_uint8(images, 21) is images


def test_images_of_another_size_and_channel_count(tmp_path):
    """An RGB model takes grey images of any size, as arrays, lists of arrays or files."""
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    data = _tiny_data(channels=3, size=12)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    grey = torch.randint(0, 256, (5, 1, 20, 20), dtype=torch.uint8)
    expected = _in_memory(state, resize_uint8(grey, 12).expand(-1, 3, -1, -1))
    out = model.predict(None, grey.numpy())
    np.testing.assert_allclose(_probs(out), expected, rtol=0, atol=1e-6)
    assert list(out[served_model.PREDICTED]) == [data.classes[i] for i in expected.argmax(1)]
    # A list of C x H x W arrays of different sizes: one row each, in order.
    mixed = [grey[0].numpy(), np.asarray(Image.fromarray(grey[1, 0].numpy()).resize((31, 17)))]
    mixed[1] = mixed[1][None]
    out = model.predict(None, mixed)
    assert len(out) == 2
    np.testing.assert_allclose(_probs(out)[0], expected[0], rtol=0, atol=1e-6)
    # Files: read as the training loader reads them, at the dataset's size.
    path = tmp_path / "big.png"
    Image.fromarray(np.repeat(grey[2, 0].numpy()[:, :, None], 3, axis=2)).resize((64, 48)).save(
        path
    )
    from_file = _in_memory(state, read_image(path, 12, 3)[None])
    np.testing.assert_allclose(_probs(model.predict(None, [str(path)])), from_file, atol=1e-6)


@pytest.fixture(scope="module")
def served_grey_and_rgb(tmp_path_factory) -> dict[int, ImageClassifierModel]:
    """Served models trained on grey (1) and RGB (3) images."""
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    served = {}
    for channels in (1, 3):
        data = _tiny_data(channels=channels, size=12)
        state, _ = _trained(cfg, data)
        served[channels] = _served(state, cfg, data, tmp_path_factory.mktemp(f"{channels}"))
    return served


def _chw(pixels: np.ndarray) -> np.ndarray:
    """Pillow's N x H x W [x C] arrays as N x C x H x W."""
    return pixels[:, None] if pixels.ndim == 3 else pixels.transpose(0, 3, 1, 2)


@pytest.mark.parametrize("trained_on", [1, 3])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])  # Pillow's L, LA, RGB and RGBA
def test_arrays_of_another_channel_count_are_converted_as_pillow_converts_files(
    served_grey_and_rgb, trained_on, channels
):
    """Before: a grey model refused RGB arrays, an RGB model RGBA ones. Now each array gives
    the prediction of its image converted by Pillow to the dataset's mode, as a file is."""
    model = served_grey_and_rgb[trained_on]
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, (4, 17, 23, channels)[: 3 if channels == 1 else 4], np.uint8)
    mode = "L" if trained_on == 1 else "RGB"
    converted = _chw(np.stack([np.asarray(Image.fromarray(p).convert(mode)) for p in pixels]))
    given = _chw(pixels)
    if trained_on == 3 and channels < 3:  # grey, repeated; alpha dropped
        np.testing.assert_array_equal(converted, np.repeat(given[:, :1], 3, axis=1))
    elif trained_on == 3:  # RGB as it is; alpha dropped
        np.testing.assert_array_equal(converted, given[:, :3])
    expected = _probs(model.predict(None, converted))
    np.testing.assert_array_equal(_probs(model.predict(None, given)), expected)
    np.testing.assert_array_equal(_probs(model.predict(None, list(given))), expected)


def test_rgb_jpegs_of_grey_x_rays_give_what_their_grey_images_give(served_grey_and_rgb, tmp_path):
    """What users send: grey pictures saved as RGB JPEGs (a scanner's slight tint sets R, G
    and B a little apart), as files and as arrays, to a model trained on grey images; and grey
    and RGB in one list."""
    model = served_grey_and_rgb[1]
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 30, 26, 1))
    tinted = np.clip(grey + rng.integers(-6, 7, (3, 30, 26, 3)), 0, 255).astype(np.uint8)
    paths = []
    for i, image in enumerate(tinted):
        paths.append(tmp_path / f"xray{i}.jpg")
        Image.fromarray(image).save(paths[-1], quality=75)
    rgb = np.stack([np.asarray(Image.open(path)) for path in paths])
    assert rgb.shape[-1] == 3 and (rgb[..., 0] != rgb[..., 2]).any()
    luma = np.stack([np.asarray(Image.open(path).convert("L")) for path in paths])
    for path, image in zip(paths, luma, strict=True):
        Image.fromarray(image).save(path.with_suffix(".png"))
    from_grey_files = _probs(model.predict(None, [str(p.with_suffix(".png")) for p in paths]))
    np.testing.assert_array_equal(
        _probs(model.predict(None, [str(p) for p in paths])), from_grey_files
    )
    expected = _probs(model.predict(None, luma[:, None]))
    np.testing.assert_array_equal(_probs(model.predict(None, _chw(rgb))), expected)
    mixed = [_chw(rgb)[0], luma[1][None], _chw(rgb)[2]]
    np.testing.assert_array_equal(_probs(model.predict(None, mixed)), expected)


@pytest.mark.parametrize(
    ("channels", "images", "message"),
    [
        (3, np.zeros((2, 5, 12, 12), np.uint8), "have 5 channels; this model takes 1 (grey)"),
        (1, [np.zeros((6, 12, 12), np.uint8)], "2 (grey and alpha), 3 (RGB) or 4 (RGBA), and"),
        (1, np.zeros((2, 1, 12, 12), np.float32), "must be uint8 (0-255), got torch.float32"),
        (1, np.full((2, 1, 12, 12), 300), "must be uint8"),
        (1, np.zeros((1, 12, 12), np.uint8), "must be N x C x H x W (one image: add a first"),
        (1, [np.zeros((12, 12), np.uint8)], "each image in a list must be C x H x W"),
        (1, {"images": 1}, "expected a uint8 array N x C x H x W, a list of image paths"),
    ],
)
def test_images_the_model_cannot_take_are_refused(tmp_path, channels, images, message):
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    data = _tiny_data(channels=channels, size=12)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        model.predict(None, images)


def test_integer_arrays_within_0_to_255_are_taken_as_json_gives_them(tmp_path):
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    data = _tiny_data(channels=1, size=12)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    images = data.val_x[:3].numpy()
    np.testing.assert_array_equal(
        _probs(model.predict(None, images.astype(np.int64))), _probs(model.predict(None, images))
    )


def test_unreadable_files_raise_unless_skipped(tmp_path):
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    data = _tiny_data(channels=1, size=12)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(data.val_x[0, 0].numpy()).save(good)
    bad.write_bytes(b"not an image")
    with pytest.raises(OSError, match="cannot identify image file"):
        model.predict(None, [str(good), str(bad)])
    out = model.predict(None, [str(bad), str(good)], params={"on_unreadable": "skip"})
    assert list(out[served_model.ERROR].str.startswith("UnidentifiedImageError")) == [True, False]
    assert out[served_model.PREDICTED][0] == "" and np.isnan(_probs(out)[0]).all()
    expected = _in_memory(state, data.val_x[:1])
    np.testing.assert_allclose(_probs(out)[1:], expected, atol=1e-6)


def test_the_served_model_and_the_loaders_call_the_same_files_unreadable(tmp_path):
    # Before: a decompression bomb among the paths ended predict's whole call, skip or not.
    cfg = TrialConfig(max_epochs=1, batch_size=8)
    data = _tiny_data(channels=1, size=12)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    good = write_image(tmp_path / "files" / "good.png", 3, channels=1)
    bad = add_bad_files(tmp_path / "files")
    paths = [bad["truncated"], good, bad["bomb"], bad["appledouble"], bad["album"]]
    out = model.predict(None, [str(p) for p in paths], params={"on_unreadable": "skip"})
    batch = image_files.read_images(paths, 12, "L")
    assert batch.read.tolist() == [1]
    assert [e.split(":")[0] for e in out[served_model.ERROR]] == [
        "OSError",
        "",
        "DecompressionBombError",
        "UnidentifiedImageError",
        "IsADirectoryError",
    ]
    np.testing.assert_allclose(_probs(out)[1:2], _in_memory(state, torch.from_numpy(batch.images)))
    assert served_model.unreadable_errors() == image_files.unreadable_errors()


def test_multilabel_output_has_the_labels_at_or_above_the_threshold(tmp_path):
    cfg = TrialConfig(dataset="digits-multilabel", loss="bce", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-multilabel", DataOptions()), 200)
    state, _ = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    images = data.val_x[:20]
    out = model.predict(None, images.numpy())
    expected = _in_memory(state, images, multilabel=True)
    assert list(out.columns) == ["labels", *(f"prob_{c}" for c in data.classes)]
    np.testing.assert_allclose(_probs(out), expected, rtol=0, atol=1e-6)
    for threshold in (0.5, 0.2):
        out = model.predict(None, images.numpy(), params={"threshold": threshold})
        wanted = [
            ";".join(data.classes[i] for i in np.flatnonzero(row >= threshold)) for row in expected
        ]
        assert list(out["labels"]) == wanted
    assert out["labels"].str.len().sum() > 0  # some labels at 0.2, so the test can tell


def test_an_svm_classifier_gives_the_probabilities_the_run_logged(tmp_path):
    cfg = TrialConfig(classifier="svm", max_epochs=1, batch_size=32, dataset="digits-lt")
    data = limit_train(load_dataset("digits-lt", DataOptions()), 150)
    state, outcome = _trained(cfg, data)
    model = _served(state, cfg, data, tmp_path)
    out = model.predict(None, data.val_x.numpy())
    np.testing.assert_allclose(_probs(out), outcome.val.y_prob, rtol=0, atol=1e-12)
    head_only = evaluate(state.model, state.criterion, data.val_x, data.val_y, CPU).y_prob
    assert not np.allclose(outcome.val.y_prob, head_only)  # the SVM, not the head, decides
