"""What `dnc measure model=... weights=... dataset=...` measures: the model built from its name, its weights loaded
safely, and the dataset's splits as batches the model reads.

A torchvision model gets random weights (nothing is downloaded) and num_classes = the dataset's; its first Conv2d
is replaced when its in_channels differ from the dataset's (model.adapt_input) and images can be resized
(model.resize), which is how a ResNet-18 reads the 1-channel 8x8 digits.
"""

from __future__ import annotations

import difflib
import importlib
import logging

import torch
from torch import nn

from dnc_cli.errors import UsageError, short
from dnc_cli.guards import load_safely, require_finite

log = logging.getLogger("dnc.measure")
STATE_KEYS = ("model", "state_dict")  # where a checkpoint file keeps its state_dict (a dnc checkpoint: "model")


def build_model(spec, num_classes: int, in_channels: int | None) -> nn.Module:
    """The module named by `spec.name` (config.MeasureModelConfig): `python.path:factory` called with spec.kwargs,
    or a torchvision model (weights=None, num_classes = the dataset's unless given), its first Conv2d adapted to
    `in_channels`."""
    name, kwargs = spec.name, dict(spec.kwargs)
    if ":" in name:
        model = call_factory(name, kwargs)
    else:
        import torchvision

        names = torchvision.models.list_models()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
            raise UsageError(f"model={name} is neither python.path:factory nor a torchvision model"
                             + (f"; close matches: {', '.join(close)}" if close else ""))
        kwargs.setdefault("num_classes", num_classes)
        try:  # the builder checks its kwargs as it goes: any error is theirs
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except Exception as exc:
            raise UsageError(f"model={name} with {kwargs}: {short(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"model={name} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec.adapt_input and in_channels is not None:
        adapt_first_conv(model, in_channels)
    return model


def call_factory(name: str, kwargs: dict):
    """`python.path:factory` imported and called with `kwargs`. This runs the user's code, by design (README, "Measure
    your own model"): whatever the import or the call raises, a SystemExit included (model=sys:exit), is a
    one-line UsageError that names model= and the cause; the cause keeps its traceback for HYDRA_FULL_ERROR=1."""
    module_path, _, attribute = name.partition(":")
    if not module_path or module_path.startswith(".") or not attribute:
        raise UsageError(f"model={name}: give an absolute module path and a callable, python.path:factory "
                         "(e.g. torchvision.models:resnet18)")
    try:
        module = importlib.import_module(module_path)
    except (Exception, SystemExit) as exc:  # not found, a syntax error, or the module failing as it runs
        raise UsageError(f"model={name}: cannot import {module_path} ({short(exc)})") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise UsageError(f"model={name}: {module_path} has no callable {attribute}")
    try:
        return factory(**kwargs)
    except (Exception, SystemExit) as exc:
        raise UsageError(f"model={name}: calling it with {kwargs} failed ({short(exc)})") from exc


def adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first nn.Conv2d by one with `in_channels` inputs (same kernel, stride, padding; fresh weights)
    when its own differ: how an RGB architecture reads grey images."""
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.in_channels == in_channels or conv.groups != 1:
            return
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None, padding_mode=conv.padding_mode))
        log.info("model.adapt_input: %s now takes %d input channels (was %d)", name, in_channels, conv.in_channels)
        return


def load_weights(model: nn.Module, path: str, name: str) -> None:
    """A state_dict (or a dnc checkpoint's "model", or {"state_dict": ...}) loaded with weights_only=True (no pickled
    code runs), strictly: every key and shape must fit the model."""
    state = load_safely(path)  # not a torch file, pickled code (refused by weights_only), truncated, ...
    if isinstance(state, dict):
        for key in STATE_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights={path} is not a state_dict (a dict of tensors)")
    require_finite(state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise UsageError(f"weights={path} does not fit model={name}: {detail[:300]}") from None


class ImageBatches:
    """A split's images and labels as (x, y) batches, resized per batch (model.resize): re-iterable, fixed order."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, batch_size: int, resize: int | None):
        self.x, self.labels, self.batch_size, self.resize = x, labels, batch_size, resize

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.labels), self.batch_size):
            x = self.x[start:start + self.batch_size]
            if self.resize is not None and x.ndim == 4:
                x = nn.functional.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                                              align_corners=False)
            yield x, self.labels[start:start + self.batch_size]
