"""dnc_cli/models/networks.py: the layer protocol every analysis relies on, and the small initialisation."""

from __future__ import annotations

import pytest
import torch

from dnc_cli.config import ModelConfig, ModelName
from dnc_cli.models.networks import build_model


@pytest.mark.parametrize("name", [ModelName.mlp, ModelName.resnet18_mlp, ModelName.vgg11_mlp])
def test_layer_protocol(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, depth=3, width=16), (1, 8, 8), 10).eval()
    x = torch.randn(5, 1, 8, 8)
    h0 = model.embed(x)
    trace = model.trace(h0)
    assert len(trace.inputs) == len(trace.preacts) == len(trace.outputs) == 3
    torch.testing.assert_close(trace.logits, model(x))
    for i, layer in enumerate(model.layers):
        torch.testing.assert_close(trace.preacts[i], trace.inputs[i] @ layer.weight.T)
        torch.testing.assert_close(trace.outputs[i], torch.relu(trace.preacts[i]))
        if i > 0:
            assert trace.inputs[i] is trace.outputs[i - 1]
    stages = model.backbone_stages(x)
    assert (len(stages) == 0) == (name == ModelName.mlp)
    assert [d["in_features"] for d in model.describe()] == [h0.shape[1], 16, 16]


def test_small_initialisation():
    model = build_model(ModelConfig(depth=2, width=256, init_gain=0.1), (1, 8, 8), 10)
    bound = 0.1 * (6 / (64 + 256)) ** 0.5  # xavier_uniform bound with gain 0.1
    assert model.layers[0].weight.abs().max() <= bound
    assert model.layers[0].weight.abs().max() > 0.9 * bound
    assert model.classifier.weight.abs().max() > bound  # last layer keeps the default init
