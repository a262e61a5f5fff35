"""Weights into a trunk: a local file (for machines without internet), or the state dict a
source downloaded. Keys of the removed classifier (and auxiliary heads) are ignored; a key the
trunk needs that is missing, or of another shape, is an error naming the file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from trainables.backbones._trunk import is_skeleton
from trainables.backbones._types import ModelError


def load_weights_file(trunk: nn.Module, backbone: str, path: Path) -> None:
    """A PyTorch state dict (``.pt``/``.pth``, optionally under a ``state_dict`` key) or a
    ``.safetensors`` file, as torchvision and timm publish them."""
    if not path.is_file():
        raise ModelError(
            f"weights file {str(path)!r} does not exist; accepted: imagenet, none, or a path"
        )
    state = _read(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    load_into_trunk(trunk, state, f"weights file {str(path)!r}", backbone)


def _read(path: Path) -> object:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(
                f"weights file {str(path)!r} is a .safetensors file; reading it needs the "
                "safetensors package (pip install safetensors, or the timm extra)"
            ) from None
        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types for a bad file
            raise ModelError(
                f"weights file {str(path)!r} is not a safetensors file: {err}"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ModelError(f"weights file {str(path)!r} is not a PyTorch state dict: {err}") from None


def load_into_trunk(trunk: nn.Module, state: dict, what: str, backbone: str) -> None:
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state))
    wrong_shape = sorted(
        k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or wrong_shape:
        detail = f"missing {missing[:3]}" if missing else f"wrong shape for {wrong_shape[:3]}"
        raise ModelError(f"{what} does not fit backbone {backbone!r}: {detail}")
    # The classifier is replaced by our head, so its weights (another class count) may differ.
    if is_skeleton(trunk):  # built without values (``_trunk.skeleton``): take the file's own
        cast = {k: state[k].to(own[k].dtype) for k in own}  # a half-precision file: float32
        with _swapping():
            trunk.load_state_dict(cast, strict=True, assign=True)
    else:
        trunk.load_state_dict({k: state[k] for k in own}, strict=True)


@contextlib.contextmanager
def _swapping() -> Iterator[None]:
    """``load_state_dict`` swaps each loaded value into the module's own parameter object
    (torch's ``swap_tensors``) instead of putting a new one in its place, so what holds the
    skeleton's parameters (a trunk's stages hold ViT's class token) holds the weights."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        yield
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)
