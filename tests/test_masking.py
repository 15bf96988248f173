"""SmartState: budget groups, the per-forward mask cache, the global soft budget, fractionality."""

import pytest
import torch
from tiny_models import tiny_vit, vit_inputs

import smart_hf.budget_groups as masking
from smart_hf import SmartConfig, get_smart_state, harden, prepare_model, set_temperature
from smart_hf.budget_groups import hard_group_masks
from smart_hf.core.budget import global_weight_budget


def test_one_top_k_per_group_per_forward(monkeypatch):
    model = prepare_model(tiny_vit(), SmartConfig(overrides=[{"regex": r".*fc1", "pattern": "nm"}]))
    state = get_smart_state(model)
    calls = []
    real, real_rows = masking.soft_topk, masking.short_row_topk
    monkeypatch.setattr(masking, "soft_topk", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    rows = lambda scores, *a, **k: calls.append([s.shape for s in scores]) or real_rows(scores, *a, **k)  # noqa: E731
    monkeypatch.setattr(masking, "short_row_topk", rows)
    model(**vit_inputs())
    # one global group + two N:M layers of one shape, whose rows are solved together in one call
    assert len(state.groups) == 3 and len(calls) == 2
    nm_shapes = [g.layers[0].smart_scores.shape for g in state.groups if g.kind == "nm"]
    assert [shapes for shapes in calls if isinstance(shapes, list)] == [nm_shapes]
    calls.clear()
    model(**vit_inputs())  # the cache is per forward: recomputed, not stale
    assert len(calls) == 2


def test_global_soft_budget_spans_all_layers():
    model = prepare_model(tiny_vit(), SmartConfig(block_shape=[2, 4], sparsity=0.7, min_layer_density=0.05))
    state = get_smart_state(model)
    (group,) = state.groups
    total = sum(layer.smart_layout.num_weights for layer in group.layers)
    for tau in [1.0, 0.05, 1e-4]:
        set_temperature(model, tau)
        masks = state.soft_group_masks(0)
        kept = sum(
            float(m.detach().double().sum()) * layer.smart_layout.unit_cost for m, layer in zip(masks, group.layers)
        )
        assert kept == pytest.approx(global_weight_budget(total, 0.7), rel=1e-6)
        assert all(((m >= 0) & (m <= 1)).all() for m in masks)


def test_cached_masks_and_direct_layer_calls_agree():
    torch.manual_seed(0)
    model = prepare_model(tiny_vit(), SmartConfig())
    fc1 = model.vit.layers[0].mlp.fc1
    seen = {}
    handle = fc1.register_forward_hook(lambda mod, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    model(**vit_inputs())
    handle.remove()
    direct = fc1(seen["x"])  # outside a root forward: computed on the spot
    torch.testing.assert_close(direct, seen["y"], atol=1e-6, rtol=0)


def test_gradients_flow_through_the_cache_across_forwards():
    model = prepare_model(tiny_vit(), SmartConfig())
    loss = model(**vit_inputs()).logits.sum() + model(**vit_inputs()).logits.sum()
    loss.backward()
    assert all(layer.smart_scores.grad is not None for layer in get_smart_state(model).layers)


def test_fractionality_tracks_the_last_training_forward():
    model = prepare_model(tiny_vit(), SmartConfig(score_init="constant"))
    state = get_smart_state(model)
    assert state.fractionality() != state.fractionality()  # NaN before any forward
    with torch.no_grad():
        model(**vit_inputs())
    assert state.fractionality() != state.fractionality()  # eval forwards do not count
    model(**vit_inputs())
    units = sum(layer.smart_layout.num_units for layer in state.layers)
    reserved = len(state.layers)  # one reserved (exactly 1) unit per layer, the rest at k/N-ish
    assert 0.4 < state.fractionality() <= 0.5 * (units - reserved) / units + 1e-6
    set_temperature(model, 1e-6)
    with torch.no_grad():
        for layer in state.layers:
            layer.smart_scores.copy_(torch.randn_like(layer.smart_scores))
    model(**vit_inputs())
    assert state.fractionality() < 1e-3


def test_casting_the_model_keeps_the_state_buffers_exact():
    model = prepare_model(tiny_vit(), SmartConfig())
    set_temperature(model, 1e-4)
    model.to(torch.bfloat16)
    state = get_smart_state(model)
    assert state.temperature.dtype == torch.float64 and float(state.temperature) == 1e-4
    assert next(model.parameters()).dtype == torch.bfloat16


def test_a_forward_that_raises_still_closes_the_root_forward():
    """The root forward hook runs even when the forward raises (``always_call``): the state does not stay "inside a
    forward", where a later direct layer call would be served the failed forward's cached masks."""
    model = prepare_model(tiny_vit(), SmartConfig(pattern="block", block_shape=[4, 4], sparsity=0.5))
    state = get_smart_state(model)
    with pytest.raises(Exception):  # noqa: B017 -- any error of the model's own forward
        model(pixel_values=torch.zeros(1, 1, 1, 1))
    assert state._in_root_forward is False


def test_hard_masks_are_the_frozen_ones_once_hardened_unless_asked_to_solve():
    """`SmartState.hard_group_masks` is one function: once hardened it returns the frozen masks, and with
    ``use_frozen=False`` it solves them from the scores, as it does before hardening."""
    model = prepare_model(tiny_vit(), SmartConfig(pattern="block", block_shape=[4, 4], sparsity=0.5))
    state = get_smart_state(model)
    before = [state.hard_group_masks(i) for i in range(len(state.groups))]
    for i, masks in enumerate(before):
        assert all(torch.equal(a, b) for a, b in zip(masks, state.hard_group_masks(i, use_frozen=False)))
    harden(model)
    with torch.no_grad():
        for layer in state.layers:
            layer.smart_scores.neg_()  # the scores now rank the other way; the frozen masks do not move
    for i, masks in enumerate(before):
        frozen = state.hard_group_masks(i)
        assert all(f is layer.smart_mask for f, layer in zip(frozen, state.groups[i].layers))
        assert all(torch.equal(a, b) for a, b in zip(masks, frozen))
        solved = state.hard_group_masks(i, use_frozen=False)
        assert all(torch.equal(a, b) for a, b in zip(solved, hard_group_masks(state.groups[i])))
        assert not all(torch.equal(a, b) for a, b in zip(masks, solved))
