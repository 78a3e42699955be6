"""Networks, all exposing ONE layer protocol that every analysis uses (no architecture-specific branches).

The layer protocol
------------------
A `DNCNet` is  x --backbone--> h_0 --layers[0]--> h_1 --...--> h_L --classifier--> logits.

* `embed(x)` returns h_0: the flattened input (MLP) or the backbone's output (conv models).
* `layers` is the ordered list of the L analysed layers; layer l (1-based, as in the paper) is
  `layers[l-1]`, an `nn.Linear` whose `.weight` is W_l (m_l x m_{l-1}); `act` is the activation sigma.
* `trace(h_0)` runs the head once and returns a `LayerTrace` with every layer's input h_{l-1},
  pre-activation W_l h_{l-1} (+ bias) and output h_l = sigma(W_l h_{l-1}), plus the logits. The tensors
  stay connected to the autograd graph, so gradients of the logits w.r.t. every h_{l-1} come out of one
  backward pass (this is how `dnc analyze` gets all layers' AGOPs at once).
* `classifier` is the last linear map A (K x m_L): NC3 compares it with the class means of h_L.
* `backbone_stages(x)` yields (name, features) for intermediate backbone outputs ([] for the MLP),
  for NC metrics inside the backbone; `describe()` lists the layers for checkpoint metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dnc_cli.config import ModelConfig, ModelName
from dnc_cli.errors import UsageError


@dataclass
class LayerTrace:
    inputs: list[torch.Tensor]  # h_{l-1}, l = 1..L (inputs[0] is h_0)
    preacts: list[torch.Tensor]  # W_l h_{l-1}
    outputs: list[torch.Tensor]  # h_l
    logits: torch.Tensor


class DNCNet(nn.Module):
    def __init__(self, backbone: nn.Module, in_features: int, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.backbone = backbone
        widths = [in_features] + [cfg.width] * cfg.depth
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=cfg.bias) for a, b in zip(widths[:-1], widths[1:]))
        self.act = nn.ReLU()
        self.classifier = nn.Linear(cfg.width, num_classes, bias=cfg.bias)  # default init, as official
        for index, layer in enumerate(self.layers):
            if index == 0 and cfg.first_layer_default_init:
                continue
            # the paper's "small initialisation": xavier_uniform with a small gain
            nn.init.xavier_uniform_(layer.weight, gain=cfg.init_gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).flatten(1)

    def trace(self, h0: torch.Tensor) -> LayerTrace:
        inputs, preacts, outputs = [], [], []
        h = h0
        for layer in self.layers:
            inputs.append(h)
            preacts.append(layer(h))
            h = self.act(preacts[-1])
            outputs.append(h)
        return LayerTrace(inputs, preacts, outputs, self.classifier(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for layer in self.layers:
            h = self.act(layer(h))
        return self.classifier(h)

    def backbone_stages(self, x: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        stages = getattr(self.backbone, "stages", None)
        return [] if stages is None else stages(x)

    def describe(self) -> list[dict]:
        return [{"layer": i + 1, "in_features": layer.in_features, "out_features": layer.out_features,
                 "activation": "relu", "bias": layer.bias is not None} for i, layer in enumerate(self.layers)]


class ResNetBackbone(nn.Module):
    """torchvision resnet18 without its fc: x -> 512-d; `stages` also returns each residual stage's output."""

    def __init__(self, in_channels: int, small_input_stem: bool):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(weights=None)
        if small_input_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.net = net

    def stages(self, x):
        n = self.net
        out = []
        h = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(n, name)(h)
            out.append((f"backbone.{name}", h.flatten(1)))
        return out

    def forward(self, x):
        return self.net(x)


class VGGBackbone(nn.Module):
    """torchvision vgg11 features + global average pool: x -> 512-d. Max-pools that would shrink the map
    below 1x1 (small inputs such as 8x8 digits or 28x28 MNIST) are dropped."""

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        import torchvision

        features = torchvision.models.vgg11(weights=None).features
        features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        size = image_size
        for i, module in enumerate(features):
            if isinstance(module, nn.MaxPool2d):
                if size < 2:
                    features[i] = nn.Identity()
                else:
                    size //= 2
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def stages(self, x):
        out, block = [], 0
        for module in self.features:
            x = module(x)
            if isinstance(module, nn.MaxPool2d):
                block += 1
                out.append((f"backbone.block{block}", x.flatten(1)))
        return out

    def forward(self, x):
        return self.pool(self.features(x))


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> DNCNet:
    channels = input_shape[0]
    if cfg.name == ModelName.mlp:
        in_features = 1
        for s in input_shape:
            in_features *= s
        return DNCNet(nn.Flatten(), in_features, cfg, num_classes)
    if len(input_shape) != 3 or input_shape[1] < 4:
        raise UsageError(f"model={cfg.name.value} needs image inputs (C, H, W) with H >= 4, got {input_shape}; "
                         f"use model=mlp for this dataset")
    if cfg.name == ModelName.resnet18_mlp:
        return DNCNet(ResNetBackbone(channels, cfg.small_input_stem), 512, cfg, num_classes)
    if cfg.name == ModelName.vgg11_mlp:
        return DNCNet(VGGBackbone(channels, input_shape[1]), 512, cfg, num_classes)
    raise UsageError(f"model={cfg.name.value} is not a network; valid: mlp, resnet18_mlp, vgg11_mlp")
