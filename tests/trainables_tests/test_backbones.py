"""Every backbone by name: torchvision's whole classification registry built on the meta
device, a forward and backward pass for a sample at the smallest input each accepts, freezing
by stages, timm models when timm is installed, ``--list-backbones``, the error for an unknown
name and the warning for a frozen random backbone."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import tune
from sweep.options import parse_args
from sweep.plan import build_plan
from trainables import backbones
from trainables.backbones import (
    ModelError,
    _registry,
    _timm,
    get_backbone,
    list_backbones,
    list_backbones_text,
    stage_count,
    stage_tensors,
    trunk_on_meta,
)
from trainables.backbones._torchvision import TorchvisionSource
from trainables.backbones._trunk import on_meta
from trainables.contract import FROZEN_RANDOM_TAG
from trainables.edge import served_model
from trainables.models import build_model, parse_freeze

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
# Small ones, one per kind of classifier the generic rules strip: a linear layer (ResNet,
# RegNet), dropout then linear (EfficientNet), several layers (MobileNetV3), a 1 x 1
# convolution before the global pool (SqueezeNet).
SAMPLE = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0", "regnet_x_400mf"]
FAMILIES = {}  # one name per module of torchvision.models, for the served-model rebuild
for _name in TORCHVISION:
    FAMILIES.setdefault(torchvision.models.get_model_builder(_name).__module__, _name)


def _tensor_ids(module: nn.Module) -> list[int]:
    return [id(t) for t in (*module.parameters(), *module.buffers())]


# --- the whole torchvision registry, on the meta device -------------------------------------


def test_every_torchvision_classification_model_is_a_backbone():
    names = list_backbones()
    assert set(TORCHVISION) <= set(names) and len(TORCHVISION) == 80
    assert names[: len(TORCHVISION) + 1] == ["smallcnn", *TORCHVISION]


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_torchvision_model_builds_a_trunk_whose_stages_hold_all_of_it(name):
    trunk = trunk_on_meta(name)
    assert all(t.is_meta for t in trunk.module.parameters())
    staged = [id(t) for stage in trunk.stages for item in stage for t in stage_tensors(item)]
    assert len(staged) == len(set(staged)), "a tensor in two stages"
    assert set(staged) == set(_tensor_ids(trunk.module)), "a tensor in no stage"
    assert len(trunk.stages) >= 5
    # The 1000-way ImageNet classifier is gone, whatever its form.
    classifiers = [
        m
        for m in trunk.module.modules()
        if (isinstance(m, nn.Linear) and m.out_features == 1000)
        or (isinstance(m, nn.Conv2d) and m.out_channels == 1000)
    ]
    assert not classifiers and trunk.feature_dim > 0


@pytest.mark.parametrize("name", sorted(FAMILIES.values()))
def test_the_served_model_rebuilds_each_familys_trunk_key_for_key(name):
    trunk = trunk_on_meta(name)
    spec = served_model.ModelSpec(
        classes=("a", "b"),
        multilabel=False,
        backbone=name,
        feature_dim=trunk.feature_dim,
        head_hidden=(),
        data_channels=3,
        data_size=32,
        input_channels=3,
        input_size=32,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in trunk.served.items()},
    )
    rebuilt = on_meta(lambda: served_model.build_trunk(spec))
    ours = {k: tuple(v.shape) for k, v in trunk.module.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == ours


# --- a sample, for real, on the CPU ---------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLE)
def test_a_sample_trains_a_step_at_the_smallest_input_it_accepts(name):
    spec = get_backbone(name).input_spec()
    size = spec.smallest  # torchvision's own declaration (weights.meta["min_size"])
    assert size == torchvision.models.get_model_weights(name).DEFAULT.meta["min_size"][0]
    torch.manual_seed(0)
    model = build_model(
        backbone=name,
        weights="none",
        num_classes=3,
        in_channels=1,
        data_size=size,
        image_size=size,
        head_hidden=(8,),
    ).train()
    images = torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)
    logits, embedding = model.forward_with_embedding(images)
    assert logits.shape == (2, 3) and embedding.shape == (2, 8)
    assert model.neck[0].in_features == trunk_on_meta(name).feature_dim
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    first = next(p for p in model.backbone.parameters())
    assert first.grad.abs().sum() > 0  # the gradient reaches the input stem


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_the_trunk_computes_what_torchvision_computes_before_its_classifier(name):
    """torchvision's own model, its classifier applied to our trunk's features: the same
    logits (eval mode, the same weights)."""
    torch.manual_seed(0)
    full = torchvision.models.get_model(name, weights=None).eval()
    trunk = get_backbone(name).build(weights="none", in_channels=3)
    trunk.module.load_state_dict(full.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    classifier = getattr(full, trunk.served["classifier_attr"])
    with torch.no_grad():
        torch.testing.assert_close(classifier(trunk.module.eval()(x)), full(x))


# --- freezing by stages ---------------------------------------------------------------------


def _stage_names(name: str) -> list[list[str]]:
    trunk = trunk_on_meta(name)
    names = {id(m): n for n, m in trunk.module.named_modules()}
    names.update({id(p): n for n, p in trunk.module.named_parameters()})
    return [[names[id(item)] for item in stage] for stage in trunk.stages]


def test_the_original_backbones_keep_their_stages():
    assert _stage_names("smallcnn") == [["block1"], ["block2"]]
    resnet = [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    assert _stage_names("resnet50") == resnet
    dense = _stage_names("densenet121")
    assert dense[0] == ["features.conv0", "features.norm0"]
    assert dense[4] == ["features.denseblock4", "features.norm5"]
    vgg = _stage_names("vgg16")
    assert [len(s) for s in vgg] == [5, 5, 7, 7, 7]  # up to and with each max-pool


def test_stages_are_the_blocks_each_family_declares():
    assert _stage_names("regnet_x_400mf") == [
        ["stem"],
        *([f"trunk_output.block{i}"] for i in range(1, 5)),
    ]
    assert _stage_names("efficientnet_b0") == [[f"features.{i}"] for i in range(9)]
    vit = _stage_names("vit_b_32")
    # The class token and position embedding feed the first layer: they freeze with the stem.
    assert vit[0] == ["class_token", "encoder.pos_embedding", "conv_proj"]
    assert vit[1] == ["encoder.layers.encoder_layer_0"]
    assert vit[-1] == ["encoder.layers.encoder_layer_11", "encoder.ln"]
    convnext = _stage_names("convnext_tiny")
    assert convnext[-1] == ["features.7", "classifier"]  # its kept layer norm: the last stage


def test_partial_freeze_freezes_the_first_k_stages_and_only_they_stay_put():
    torch.manual_seed(0)
    model = build_model(
        backbone="mobilenet_v3_small",
        weights="none",
        num_classes=3,
        in_channels=3,
        data_size=32,
        head_hidden=(8,),
        freeze="partial:3",
    )
    first_three = tuple(f"backbone.features.{i}." for i in range(3))
    expected = {n for n, _ in model.named_parameters() if n.startswith(first_three)}
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    nn.functional.cross_entropy(model(images), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    frozen_state = {n for n in before if n.startswith(first_three)}
    assert not changed & frozen_state  # weights and batch-norm statistics alike
    assert "head.weight" in changed and "backbone.features.3.block.0.0.weight" in changed


def test_freeze_specs_are_checked_against_each_backbones_stage_count():
    assert stage_count("efficientnet_b0") == 9 and stage_count("vit_b_16") == 13
    assert parse_freeze("partial:9", "efficientnet_b0") == ("partial", 9)
    with pytest.raises(ModelError, match=r"K in 1\.\.9"):
        parse_freeze("partial:10", "efficientnet_b0")


# What freezing a ViT's first stage fixes: its loose parameters and the patch projection.
VIT_FIRST_STAGE = {
    "backbone.class_token",
    "backbone.encoder.pos_embedding",
    "backbone.conv_proj.weight",
    "backbone.conv_proj.bias",
}


def test_a_vits_loose_parameters_freeze_with_its_first_stage():
    model = on_meta(
        lambda: build_model(
            backbone="vit_b_32",
            weights="none",
            num_classes=3,
            in_channels=3,
            data_size=32,
            freeze="partial:1",
        )
    )
    assert model.preprocess.size == 224  # a ViT takes its one size, whatever the data's
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == VIT_FIRST_STAGE
    assert set(model.trained_state_dict()).isdisjoint(frozen)


# --- weights and input --------------------------------------------------------------------


def test_a_local_weights_file_fits_a_new_backbone_and_brings_its_normalisation(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.efficientnet_b0()
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(source.state_dict(), path)  # the classifier's keys too: they are ignored
    model = build_model(
        backbone="efficientnet_b0", weights=str(path), num_classes=3, in_channels=1, data_size=8
    )
    for key, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0)
    transforms = torchvision.models.EfficientNet_B0_Weights.DEFAULT.transforms()
    assert model.preprocess.mean.flatten().tolist() == pytest.approx(transforms.mean)
    assert model.preprocess.size == 32  # the data's size, enlarged to the least we use


def test_weights_fill_a_skeleton_with_no_random_values_drawn_first(tmp_path, monkeypatch):
    """A half-precision file, as some are published: the trunk computes what torchvision's own
    model loaded with it computes, in float32, and drew no random values it then overwrote."""
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18_fp16.pth"
    torch.save(
        {k: v.half() if v.is_floating_point() else v for k, v in source.state_dict().items()}, path
    )
    draws = []  # the devices of the tensors drawn: none on the meta device costs anything
    original = torch.nn.init.kaiming_normal_
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda t, **_: draws.append(t.device))
    model = build_model(
        backbone="resnet18", weights=str(path), num_classes=3, in_channels=3, data_size=32
    ).eval()
    assert torch.device("cpu") not in draws
    build_model(backbone="resnet18", weights="none", num_classes=3, in_channels=3, data_size=32)
    assert draws.count(torch.device("cpu")) == 20  # the control: ResNet-18's convolutions
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", original)
    reference = torchvision.models.resnet18()
    reference.load_state_dict(torch.load(path))  # copied into float32 parameters
    reference.fc = nn.Identity()
    assert {t.dtype for t in model.backbone.parameters()} == {torch.float32}
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(images), reference.eval()(images))


def test_a_vits_loose_parameters_from_a_weights_file_freeze_with_its_first_stage(tmp_path):
    """The stages hold ViT's class token as an object: the one loaded, not the skeleton's."""
    shapes = trunk_on_meta("vit_b_32").module.state_dict()
    state = {k: torch.full(v.shape, 0.5, dtype=torch.float16) for k, v in shapes.items()}
    torch.save(state, tmp_path / "vit.pth")
    model = build_model(
        backbone="vit_b_32",
        weights=str(tmp_path / "vit.pth"),
        num_classes=3,
        in_channels=3,
        data_size=32,
        freeze="partial:1",
    )
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == VIT_FIRST_STAGE
    token = model.backbone.class_token
    assert token.device.type == "cpu" and token.dtype == torch.float32
    assert torch.equal(token, torch.full_like(token, 0.5))


def test_imagenet_weights_bring_the_transforms_size(tmp_path, monkeypatch):
    """GoogLeNet's pretrained weights: from torchvision's cache, their auxiliary heads' keys
    ignored, built as torchvision builds it for them (``transform_input``)."""
    weights = torchvision.models.GoogLeNet_Weights.DEFAULT
    torch.manual_seed(2)
    source = torchvision.models.googlenet(aux_logits=True, init_weights=True)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(type(weights), "get_state_dict", _unchecked_state_dict)
    model = build_model(
        backbone="googlenet", weights="imagenet", num_classes=3, in_channels=3, data_size=8
    )
    ours, theirs = model.backbone.inception5b.branch1, source.inception5b.branch1
    assert torch.equal(ours.conv.weight, theirs.conv.weight)
    assert model.backbone.transform_input and model.backbone.aux1 is None
    assert model.preprocess.size == weights.transforms().crop_size[0] == 224


def _unchecked_state_dict(self, *args, **kwargs):
    """torchvision checks the file's hash against its name; the test's file has another."""
    return torch.hub.load_state_dict_from_url(self.url, progress=False, check_hash=False)


def test_a_backbone_of_one_input_size_refuses_another():
    from trainables.backbones import check_backbone

    with pytest.raises(ModelError, match="takes 224 x 224 images only"):
        check_backbone("vit_b_16", weights="none", image_size=64)
    with pytest.raises(ModelError, match="too small for backbone 'alexnet'; accepted: 63"):
        check_backbone("alexnet", weights="none", image_size=32)
    with pytest.raises(ModelError, match="has no ImageNet weights"):
        check_backbone("smallcnn", weights="imagenet", image_size=0)


# --- timm -----------------------------------------------------------------------------------


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def test_timm_models_are_backbones_with_their_own_input(timm):
    names = list_backbones()
    assert {f"timm:{n}" for n in timm.list_models()} <= set(names)
    spec = get_backbone("timm:test_vit").input_spec()
    cfg = timm.models.get_pretrained_cfg("test_vit")
    assert (spec.size, spec.fixed, spec.mean) == (cfg.input_size[-1], True, tuple(cfg.mean))
    with pytest.raises(ModelError, match="close matches: timm:test_vit"):
        get_backbone("timm:test_vitt")


def test_a_timm_vit_trains_with_its_first_stages_frozen(timm):
    torch.manual_seed(0)
    model = build_model(
        backbone="timm:test_vit",
        weights="none",
        num_classes=3,
        in_channels=1,
        data_size=8,
        head_hidden=(8,),
        freeze="partial:2",
    )
    assert model.preprocess.size == 160  # its fixed input size
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.proj.weight"} < frozen
    first_two = (
        "backbone.cls_token",
        "backbone.pos_embed",
        "backbone.patch_embed",
        "backbone.blocks.0.",
    )
    assert all(n.startswith(first_two) for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    nn.functional.cross_entropy(model.train()(images), torch.tensor([0, 2])).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen and {"head.weight", "backbone.blocks.1.mlp.fc1.weight"} <= changed


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_weights_file_is_loaded(timm, tmp_path, suffix):
    torch.manual_seed(3)
    source = timm.create_model("test_resnet")  # with its classifier, as files come
    path = tmp_path / f"test_resnet{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    model = build_model(
        backbone="timm:test_resnet", weights=str(path), num_classes=3, in_channels=3, data_size=8
    )
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key
    assert "fc.weight" in source.state_dict()


def test_a_timm_model_is_served_module_for_module(timm):
    from trainables.config import TrialConfig
    from trainables.data import ImageData
    from trainables.edge.model_export import requirements, served_spec, served_weights

    torch.manual_seed(0)
    data = ImageData("tiny", ("a", "b", "c"), *_tiny_split())
    model = build_model(
        backbone="timm:test_efficientnet",
        weights="none",
        num_classes=3,
        in_channels=1,
        data_size=8,
        head_hidden=(16,),
    ).eval()
    spec = served_spec(model, TrialConfig(backbone="timm:test_efficientnet"), data)
    network = served_model.Network(spec)
    network.load_state_dict(served_weights(model)["network"])  # strict: every key
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(network.eval()(images), model(images), rtol=0, atol=1e-6)
    assert any(r.startswith("timm==") for r in requirements(spec))


def _tiny_split():
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(8) % 3
    return x[:4], y[:4], x[4:], y[4:]


def test_without_timm_the_names_say_how_to_get_them(monkeypatch):
    monkeypatch.setattr(_timm.TimmSource, "available", lambda self: False)
    _registry._resolve.cache_clear()
    try:
        text = list_backbones_text()
        assert not any(line.startswith("timm:") for line in text.splitlines())
        assert text.splitlines()[-1] == f"# {_registry.TIMM_HINT}"
        with pytest.raises(ModelError, match=r'needs timm; install it: .*-e ".\[timm\]"'):
            get_backbone("timm:resnet18")
    finally:
        _registry._resolve.cache_clear()


# --- the command line -----------------------------------------------------------------------


def test_list_backbones_prints_one_name_a_line(capsys):
    assert tune.main(["--list-backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[: len(TORCHVISION) + 1] == ["smallcnn", *TORCHVISION]
    counts = collections.Counter(line.split(":")[0] for line in lines if ":" in line)
    try:
        import timm
    except ImportError:
        assert counts == {"# timm": 1}
    else:
        assert counts == {"timm": len(timm.list_models())}


def test_an_unknown_backbone_is_one_line_with_close_matches(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--space", "focal", "--backbone", "efficientnet-b0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tune.py: error: unknown backbone")
    assert "close matches: efficientnet_b0" in err and "--list-backbones" in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "argv, warns",
    [
        (["--space", "freeze"], True),  # arms backbone (and none): resnet18 from scratch
        (["--space", "focal"], False),  # searches none and partial:1 only, by design
        (["--space", "focal", "--set", "freeze=backbone"], True),
    ],
)
def test_freezing_a_random_backbone_is_said_once_and_tagged(argv, warns, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args([*argv, "--backbone", "smallcnn"]))
    said = [w for w in plan.warnings if "randomly initialised" in w]
    assert len(said) == int(warns)
    assert plan.parent_tags == ({FROZEN_RANDOM_TAG: said[0]} if warns else {})
    if warns:
        assert "--weights none" in said[0] and "\n" not in said[0]


def test_no_frozen_random_warning_with_pretrained_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(backbones.SmallCNN(1).state_dict(), tmp_path / "small.pth")
    argv = ["--space", "freeze", "--backbone", "smallcnn", "--weights", "small.pth"]
    plan = build_plan(parse_args(argv))
    assert not plan.parent_tags and not any("randomly" in w for w in plan.warnings)


def test_the_meta_device_builds_without_touching_memory():
    """ViT-H/14 at 518 px (632 M parameters, 2.5 GB in float32) in no memory at all."""
    trunk = trunk_on_meta("vit_h_14")
    assert sum(p.numel() for p in trunk.module.parameters()) > 600e6
    assert trunk.served["build_kwargs"] == {"image_size": 518}
    assert TorchvisionSource().input_spec("vit_h_14").size == 518
    assert np.isclose(trunk.feature_dim, 1280)
