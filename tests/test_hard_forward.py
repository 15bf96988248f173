"""The hard-stage forward (smart_hf/layers.py): while the pruned weights are known to be exactly zero -- re-masked by
`apply_hard_masks_` and not written to since -- a layer computes with its weight as is and masks the gradient
instead of multiplying the weight by the mask. These tests pin that this changes nothing a user can see (outputs,
gradients, clipping, trained weights are bitwise those of the masked product) and that anything that may have
written to the weight or the mask since -- an optimizer step of a loop that forgot `apply_hard_masks_`, fused or
not, a hand edit, a load -- sends the layer back to the masked product."""

import copy

import pytest
import torch
from tiny_models import MODELS

from smart_hf import SmartConfig, apply_hard_masks_, get_smart_state, harden, prepare_model, set_mode, squash
from smart_hf.layers import SmartLayerMixin

PATTERNS = {
    "nm": dict(pattern="nm"),
    "block": dict(pattern="block", block_shape=[2, 4], sparsity=0.5),
    "channel": dict(pattern="channel", sparsity=0.5),
}


def _prepared(name: str, pattern: str, seed: int = 0):
    torch.manual_seed(seed)
    factory, inputs, _ = MODELS[name]
    return prepare_model(factory(), SmartConfig(**PATTERNS[pattern])), inputs


def _plain(layer) -> bool:
    """Whether the layer computes with its weight as is (the fast hard forward)."""
    return layer.smart_weight().data_ptr() == layer.weight.data_ptr()


@pytest.fixture
def masked_product(monkeypatch):
    """A switch that makes every layer take the masked product, as before the fast hard forward existed."""

    def force(on: bool):
        if on:
            monkeypatch.setattr(SmartLayerMixin, "_smart_clean_key", lambda self: None)
        else:
            monkeypatch.undo()

    return force


def _output(model, batch):
    torch.manual_seed(0)  # the same dropout draws for every forward compared
    return model(**batch).logits


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("pattern", ["nm", "block"])
def test_hardened_layers_use_the_weight_as_is_with_the_same_outputs(name, pattern, masked_product):
    model, inputs = _prepared(name, pattern)
    harden(model)
    layers = get_smart_state(model).layers
    assert all(_plain(layer) for layer in layers)
    batch = inputs(3)
    fast = _output(model, batch)
    masked_product(True)
    assert not any(_plain(layer) for layer in layers)
    assert torch.equal(_output(model, batch), fast)


def _train(model, batch, optimizer, steps: int, clip: float, remask: bool) -> list[float]:
    norms = []
    for _ in range(steps):
        optimizer.zero_grad()
        _output(model, batch).square().mean().backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        optimizer.step()
        if remask:
            apply_hard_masks_(model)
    return norms


OPTIMIZERS = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-1, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize(("name", "pattern"), [("vit", "nm"), ("gpt2", "block"), ("resnet", "channel")])
def test_fine_tuning_is_bitwise_that_of_the_masked_product(name, pattern, optimizer, masked_product):
    """Same gradients (pruned entries exactly 0 either way), so the same clipped norms and the same weights."""
    model, inputs = _prepared(name, pattern)
    harden(model)
    twin = copy.deepcopy(model)
    batch = inputs(3)
    norms_fast = _train(model, batch, OPTIMIZERS[optimizer](model.parameters()), 3, 0.05, remask=True)
    assert all(_plain(layer) for layer in get_smart_state(model).layers)
    masked_product(True)
    norms_masked = _train(twin, batch, OPTIMIZERS[optimizer](twin.parameters()), 3, 0.05, remask=True)
    assert norms_fast == norms_masked and norms_fast[0] > 0.05  # the clipping was active
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # bitwise (a NaN buffer: no forward yet)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_loop_that_forgets_apply_hard_masks_still_computes_with_the_mask(optimizer, masked_product):
    """A plain loop whose optimizer carries momentum from the search into the hard stage moves the pruned weights
    away from 0 when it forgets `apply_hard_masks_`; the forward must still use weight * mask (the fused AdamW
    writes without bumping the version counter: the optimizer step counter catches it)."""
    model, inputs = _prepared("vit", "nm")
    batch = inputs(3)
    opt = OPTIMIZERS[optimizer]([p for p in model.parameters()])
    _train(model, batch, opt, 2, 1e9, remask=False)  # soft search: momentum for every weight
    harden(model)
    _train(model, batch, opt, 2, 1e9, remask=False)  # forgot apply_hard_masks_
    layers = get_smart_state(model).layers
    pruned = [(layer.weight * layer.smart_layout.expand(1 - layer.smart_mask)).abs().max() for layer in layers]
    assert max(pruned) > 0  # the pruned weights did move: the test can fail
    assert not any(_plain(layer) for layer in layers)
    fast_guess = _output(model, batch)
    masked_product(True)
    assert torch.equal(_output(model, batch), fast_guess)
    masked_product(False)
    apply_hard_masks_(model)
    assert all(_plain(layer) for layer in layers)


def test_hand_edits_loads_and_copies_fall_back_until_re_masked():
    model, _ = _prepared("bert", "nm")
    harden(model)
    layers = get_smart_state(model).layers
    with torch.no_grad():
        layers[0].weight.fill_(1.0)
    assert not _plain(layers[0]) and _plain(layers[1])
    apply_hard_masks_(model)
    assert all(_plain(layer) for layer in layers)
    other, _ = _prepared("bert", "nm", seed=1)
    harden(other)
    model.load_state_dict(other.state_dict())  # other masks and weights: copied in place
    assert not any(_plain(layer) for layer in layers)
    apply_hard_masks_(model)
    twin = copy.deepcopy(model)  # new storages: not known to be clean until re-masked
    assert not any(_plain(layer) for layer in get_smart_state(twin).layers)
    apply_hard_masks_(twin)
    assert all(_plain(layer) for layer in get_smart_state(twin).layers)


def test_only_the_hard_stage_takes_the_fast_forward():
    model, _ = _prepared("vit", "block")
    layers = get_smart_state(model).layers
    assert not any(_plain(layer) for layer in layers)  # soft search
    set_mode(model, "dense")
    assert all(_plain(layer) for layer in layers)  # dense: the weight itself, as always
    squashed = squash(model)
    assert not any(k.startswith("_smart") for m in squashed.modules() for k in vars(m))
