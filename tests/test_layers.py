"""Masked layer classes: dense mode equals the stock layer, masks multiply the weight, hard masks zero weights."""

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from smart_hf import SmartConfig, get_smart_state, harden, prepare_model, set_mode

LAYERS = {
    "linear": (lambda: torch.nn.Linear(8, 12), lambda: torch.randn(3, 5, 8)),
    "conv1d": (lambda: Conv1D(12, 8), lambda: torch.randn(3, 5, 8)),
    "conv2d": (lambda: torch.nn.Conv2d(8, 12, 3, padding=1), lambda: torch.randn(2, 8, 6, 6)),
}


class Holder(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("pattern", ["block", "channel", "nm"])
def test_masked_layer_computes_with_weight_times_mask(kind, pattern):
    make_layer, make_x = LAYERS[kind]
    reference = make_layer()
    model = Holder(make_layer())
    model.layer.load_state_dict(reference.state_dict())
    x = make_x()
    prepare_model(model, SmartConfig(pattern=pattern, block_shape=[4, 2], sparsity=0.5))
    layer = model.layer
    assert isinstance(layer, type(reference))

    set_mode(model, "dense")
    torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=0)
    set_mode(model, "soft")
    unit_mask = get_smart_state(model).soft_group_masks(0)[0].detach()
    with torch.no_grad():
        reference.weight.mul_(layer.smart_layout.expand(unit_mask))
    torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)

    harden(model)
    zeroed = layer.weight == 0
    assert zeroed.float().mean() == pytest.approx(0.5, abs=0.15)
    torch.testing.assert_close(layer.smart_weight(), layer.weight, atol=0, rtol=0)


def test_conv1d_repr_and_grouped_conv():
    model = Holder(Conv1D(12, 8))
    prepare_model(model, SmartConfig(pattern="nm"))
    assert "nf=12, nx=8, smart=nm" in repr(model.layer)

    depthwise = Holder(torch.nn.Conv2d(8, 8, 3, groups=4))  # weight (8, 2, 3, 3): 2 inputs per group
    prepare_model(depthwise, SmartConfig(pattern="nm", n=1, m=2))
    assert depthwise.layer.smart_scores.shape == (8 * 9, 2)
    assert depthwise(torch.randn(1, 8, 5, 5)).shape == (1, 8, 3, 3)
