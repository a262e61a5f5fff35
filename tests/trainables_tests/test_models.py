"""The classifier around the project's five original backbones: training with each freeze,
weights files, the error messages. Every other backbone: test_backbones.py."""

import importlib.util

import pytest
import torch
import torchvision

from trainables.models import ModelError, build_model, get_backbone, parse_freeze

FREEZES = ["none", "backbone", "partial:1"]
ORIGINAL = ["densenet121", "resnet18", "resnet50", "smallcnn", "vgg16"]


def _tiny(backbone: str, freeze: str = "none", **kwargs):
    return build_model(
        backbone=backbone,
        weights=kwargs.pop("weights", "none"),
        num_classes=3,
        in_channels=1,
        data_size=8,
        head_hidden=(16,),
        freeze=freeze,
        **kwargs,
    )


@pytest.mark.parametrize("freeze", FREEZES)
@pytest.mark.parametrize("backbone", ORIGINAL)
def test_every_backbone_and_freeze_trains_one_step_leaving_frozen_weights(backbone, freeze):
    torch.manual_seed(0)
    model = _tiny(backbone, freeze)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    logits, embedding = model.forward_with_embedding(images)
    assert logits.shape == (4, 3) and embedding.shape == (4, 16)
    loss = torch.nn.functional.cross_entropy(logits, targets)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not changed & frozen, "a frozen parameter moved"
    assert "head.weight" in changed
    if freeze == "none":
        assert not frozen
    elif freeze == "backbone":
        assert frozen == {n for n in before if n.startswith("backbone.")}
    else:
        assert frozen and not any(n.startswith(("head", "neck")) for n in frozen)
        assert frozen < {n for n in before if n.startswith("backbone.")}


def test_frozen_batch_norm_keeps_its_running_statistics():
    model = _tiny("resnet18", "backbone")
    stats = model.backbone.bn1.running_mean.clone()
    model.train()
    model(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    assert torch.equal(model.backbone.bn1.running_mean, stats)


def test_a_local_weights_file_is_loaded(tmp_path):
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = _tiny("resnet18", weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    # Pretrained weights bring their own normalisation (ImageNet's).
    assert model.preprocess.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_imagenet_weights_go_through_torchvision_and_its_cache(tmp_path, monkeypatch):
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    source = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(source.state_dict(), cache / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = _tiny("resnet18", weights="imagenet")
    assert torch.equal(model.backbone.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.preprocess.size == 224


def test_an_incompatible_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(ModelError, match="does not fit backbone 'resnet18'"):
        _tiny("resnet18", weights=str(path))


def test_a_missing_or_foreign_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        _tiny("resnet18", weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ModelError, match="not a PyTorch state dict"):
        _tiny("resnet18", weights=str(junk))


def test_unknown_backbone_and_bad_freeze_name_what_is_accepted():
    with pytest.raises(ModelError, match="close matches: resnet18, .*--list-backbones"):
        get_backbone("resnet19")
    with pytest.raises(ModelError, match=r"K in 1\.\.5"):
        parse_freeze("partial:9", "resnet18")
    with pytest.raises(ModelError, match="accepted: none, backbone"):
        parse_freeze("top", "smallcnn")


def test_head_sizes_follow_the_config():
    model = build_model(
        backbone="resnet18",
        weights="none",
        num_classes=5,
        in_channels=3,
        data_size=32,
        head_hidden=(512, 256),
    )
    linears = [m for m in model.neck if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 256)]
    assert (model.head.in_features, model.head.out_features) == (256, 5)


TIMM = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="timm is an optional extra"
)


@pytest.mark.parametrize(
    ("backbones", "weights", "size"),
    [
        (["inception_v3"], "imagenet", 299),  # torchvision's weights say 299
        pytest.param(["timm:vit_base_patch16_384"], "imagenet", 384, marks=TIMM),  # fixed size
        pytest.param(["timm:efficientnet_b3"], "imagenet", 288, marks=TIMM),  # timm's config
        (["resnet18"], "imagenet", 224),
        (["resnet18", "inception_v3"], "imagenet", 299),  # the largest of them
        pytest.param(["timm:efficientnet_b3"], "none", 224, marks=TIMM),  # no weights: default
        (["smallcnn"], "none", 224),
    ],
)
def test_files_are_decoded_at_the_size_the_weights_expect(backbones, weights, size):
    from trainables.models import decode_size

    assert decode_size(backbones, weights, 224) == size
