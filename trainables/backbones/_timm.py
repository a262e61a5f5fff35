"""timm's models as ``timm:NAME`` (an architecture, or one with a pretrained tag such as
``timm:resnet50.a1_in1k``), with the optional extra ``pip install -e ".[timm]"``.

timm builds the trunk itself (``num_classes=0`` leaves the pooled features), its pretrained
config gives the input size, normalisation and whether the size is fixed, and the generic
rules of ``_trunk`` read the stages off the module tree (timm's ``blocks`` and ``stages``).
timm is imported only when a timm name is used: it takes seconds.
"""

from __future__ import annotations

import functools
import importlib.util

from trainables.backbones._registry import TIMM_PREFIX, register_source
from trainables.backbones._trunk import generic_stages
from trainables.backbones._types import InputSpec, Trunk

MIN_SIZE = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmSource:
    label = "timm"
    prefix = TIMM_PREFIX

    def available(self) -> bool:
        return importlib.util.find_spec("timm") is not None

    def names(self) -> list[str]:
        import timm

        return timm.list_models()

    def knows(self, arch: str) -> bool:
        import timm

        return timm.is_model(arch)

    def has_pretrained(self, arch: str) -> bool:
        cfg = _pretrained_cfg(arch)
        return cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)

    def pretrained_identity(self, arch: str) -> str:
        import timm

        # "resnet50" means timm's default tag for it, which a release may change.
        cfg = _pretrained_cfg(arch)
        tag = f"{cfg.hf_hub_id or cfg.url or cfg.file}#{cfg.tag}" if cfg else "none"
        return f"timm{timm.__version__}-{tag}"

    def channels(self, in_channels: int) -> int:
        return 3

    def input_spec(self, arch: str) -> InputSpec:
        cfg = _pretrained_cfg(arch)
        if cfg is None:
            return InputSpec(224, 1, MIN_SIZE, False, IMAGENET_MEAN, IMAGENET_STD)
        size = int(cfg.input_size[-1])
        smallest = int(cfg.min_input_size[-1]) if cfg.min_input_size else 1
        fixed = bool(cfg.fixed_input_size)
        return InputSpec(
            size=size,
            smallest=size if fixed else smallest,
            min_size=size if fixed else max(MIN_SIZE, smallest),
            fixed=fixed,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
        )

    def build(self, arch: str, *, weights: str, in_channels: int) -> Trunk:
        import timm

        # timm downloads pretrained weights once, into the Hugging Face cache.
        model = timm.create_model(arch, pretrained=weights == "imagenet", num_classes=0)
        dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
        served = {"trunk": self.label, "build_kwargs": {"num_classes": 0}}
        return Trunk(model, dim, generic_stages(model), served)


@functools.cache
def _pretrained_cfg(arch: str):
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(arch)


register_source(TimmSource())
