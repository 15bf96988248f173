"""Initial mask scores: magnitude, activation-aware (calibration pass), constant + seeded noise; normalisation."""

import copy

import pytest
import torch
from tiny_models import resnet_inputs, text_inputs, tiny_gpt2, tiny_resnet, tiny_vit, vit_inputs

from smart_hf import SmartConfig, get_smart_state, prepare_model, reinit_scores, set_mode
from smart_hf.core.granularity import canonical_weight
from smart_hf.scores import unit_importance


def _scores(model):
    return {name: layer.smart_scores.detach().clone() for name, layer in _named_layers(model)}


def _named_layers(model):
    state = get_smart_state(model)
    return list(zip(state.targeted_module_names, state.layers))


def test_magnitude_importance_is_the_unit_rms():
    model = prepare_model(tiny_vit(), SmartConfig(block_shape=[4, 8]))
    layer = model.vit.layers[0].mlp.fc1
    w = layer.weight.detach()
    expected = w.reshape(16, 4, 4, 8).square().mean(dim=(1, 3)).sqrt()
    torch.testing.assert_close(unit_importance(layer), expected)


def test_scores_are_standardised_per_budget_group():
    overrides = [{"regex": r".*fc1", "pattern": "nm"}]
    model = prepare_model(tiny_vit(), SmartConfig(overrides=overrides, score_scale="standardized"))
    for group in get_smart_state(model).groups:
        flat = torch.cat([layer.smart_scores.detach().reshape(-1) for layer in group.layers])
        assert abs(float(flat.mean())) < 1e-5 and abs(float(flat.std()) - 1) < 1e-4


def _soft_masks(model):
    """Soft masks at the target budget (past the budget anneal), at each group's own temperature."""
    state = get_smart_state(model)
    set_mode(model, "soft")
    state.set_budget_progress(1.0)
    return [m.detach() for gi in range(len(state.groups)) for m in state.soft_group_masks(gi)]


def test_score_scale_start_temperature_same_masks_one_step_size_for_every_group():
    """score_scale="start_temperature" (default) stores each group's standardised scores divided by its start
    temperature and keeps the group temperature at 1: the masks are those of "standardized", but one Adam step of
    size lr moves m / tau0 by about lr in every group (2:4 and 4x4 blocks at 90% alike), where "standardized" moves
    it by lr / tau0 -- several times more for the group that starts colder."""
    overrides = [{"regex": r".*fc1", "pattern": "nm"}]
    common = dict(block_shape=[4, 4], sparsity=0.9, budget="layer", overrides=overrides)
    torch.manual_seed(0)
    base = tiny_vit()
    models = {}
    for scale in ("start_temperature", "standardized"):
        models[scale] = prepare_model(copy.deepcopy(base), SmartConfig(score_scale=scale, **common))
    scaled, plain = (get_smart_state(models[k]) for k in ("start_temperature", "standardized"))
    assert scaled._group_tau == [1.0] * len(scaled.groups)
    assert len(set(plain._group_tau)) > 1  # the N:M layers and the 90% block layers start at other temperatures
    slots = [layer._smart_slot[0] for layer in plain.layers]
    for layer_s, layer_p, gi in zip(scaled.layers, plain.layers, slots):
        torch.testing.assert_close(layer_s.smart_scores * plain._group_tau[gi], layer_p.smart_scores)
    for mask_s, mask_p in zip(_soft_masks(models["start_temperature"]), _soft_masks(models["standardized"])):
        torch.testing.assert_close(mask_s, mask_p, atol=1e-5, rtol=0)
    # the gradient of the stored score is tau0 times that of the standardised one, so a sign-like (Adam) step of lr
    # moves m / tau0 by lr in every group
    inputs, grads = vit_inputs(), {}
    for scale, model in models.items():
        model(**inputs).logits.square().mean().backward()
        grads[scale] = [layer.smart_scores.grad.clone() for layer in get_smart_state(model).layers]
    for gi, g_scaled, g_plain in zip(slots, grads["start_temperature"], grads["standardized"]):
        torch.testing.assert_close(g_scaled, g_plain * plain._group_tau[gi], atol=1e-9, rtol=1e-3)


def test_layer_relative_importance_is_scale_free():
    """Scores divide by the layer mean first: scaling a layer's weights does not change its scores."""
    torch.manual_seed(0)
    base = tiny_vit()
    scaled = tiny_vit()
    scaled.load_state_dict(base.state_dict())
    with torch.no_grad():
        scaled.vit.layers[0].mlp.fc1.weight.mul_(100.0)
    a, b = _scores(prepare_model(base, SmartConfig())), _scores(prepare_model(scaled, SmartConfig()))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-4)


def test_constant_init_is_uniform_and_noise_is_seeded():
    uniform = _scores(prepare_model(tiny_vit(), SmartConfig(score_init="constant")))
    assert all(s.eq(0).all() for s in uniform.values())
    noisy = dict(score_init="constant", score_noise=0.1, score_scale="standardized")  # noise in standardised units
    noisy1 = _scores(prepare_model(tiny_vit(), SmartConfig(score_seed=3, **noisy)))
    noisy2 = _scores(prepare_model(tiny_vit(), SmartConfig(score_seed=3, **noisy)))
    noisy3 = _scores(prepare_model(tiny_vit(), SmartConfig(score_seed=4, **noisy)))
    for name in noisy1:
        torch.testing.assert_close(noisy1[name], noisy2[name], atol=0, rtol=0)
        assert not torch.equal(noisy1[name], noisy3[name])
    flat = torch.cat([s.reshape(-1) for s in noisy1.values()])
    assert 0.07 < float(flat.std()) < 0.13


@pytest.mark.parametrize(
    ("factory", "inputs", "pattern"),
    [(tiny_vit, vit_inputs, "block"), (tiny_gpt2, text_inputs, "nm"), (tiny_resnet, resnet_inputs, "channel")],
)
def test_activation_init_uses_calibration_batches(factory, inputs, pattern):
    torch.manual_seed(0)
    calibration = [inputs(4) for _ in range(3)]
    base = factory()
    twin = factory()
    twin.load_state_dict(base.state_dict())
    magnitude = _scores(prepare_model(base, SmartConfig(pattern=pattern)))
    activation = prepare_model(twin, SmartConfig(pattern=pattern, score_init="activation", calibration_batches=2),
                               calibration_data=calibration)  # fmt: skip
    act_scores = _scores(activation)
    assert any(not torch.allclose(magnitude[n], act_scores[n]) for n in magnitude)
    assert all(torch.isfinite(s).all() for s in act_scores.values())


def test_activation_importance_is_wanda_per_unit():
    """|W_ij| * ||X_j||: scaling one input feature by c scales its column's importance by c."""
    torch.manual_seed(0)
    layer_model = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False))
    prepare_model(layer_model, SmartConfig(block_shape=[1, 1], sparsity=0.5))
    layer = layer_model[0]
    input_sq = torch.ones(8)
    input_sq[3] = 9.0  # feature 3 has 3x the RMS
    plain, weighted = unit_importance(layer), unit_importance(layer, input_sq)
    torch.testing.assert_close(weighted[:, 3], 3 * plain[:, 3])
    torch.testing.assert_close(weighted[:, :3], plain[:, :3])
    torch.testing.assert_close(plain, canonical_weight(layer.weight.detach(), "linear")[..., 0].abs())


def test_activation_init_with_mixed_groups_matches_reinit():
    """N:M and global-budget layers live in different budget groups (a different order from the model's): the
    statistics of each layer must still be its own. `reinit_scores` recomputes them on the same dense model."""
    torch.manual_seed(0)
    calibration = [vit_inputs(4) for _ in range(2)]
    config = SmartConfig(
        score_init="activation",
        calibration_batches=2,
        overrides=[{"regex": r"vit\.layers\.1\.mlp\..*", "pattern": "nm"}],
    )
    model = prepare_model(tiny_vit(), config, calibration_data=calibration)
    at_prepare = _scores(model)
    reinit_scores(model, calibration)
    for name, scores in _scores(model).items():
        torch.testing.assert_close(scores, at_prepare[name], atol=1e-5, rtol=1e-5)


def test_reinit_needs_calibration_for_activation_and_restores_mode():
    model = prepare_model(tiny_vit(), SmartConfig(score_init="activation"), calibration_data=[vit_inputs()])
    with pytest.raises(ValueError, match="calibration_data"):
        reinit_scores(model)
    set_mode(model, "soft")
    reinit_scores(model, [vit_inputs()])
    assert get_smart_state(model).mode_name == "soft"


def test_calibration_errors():
    with pytest.raises(ValueError, match="non-empty"):
        prepare_model(tiny_vit(), SmartConfig(score_init="activation"), calibration_data=[])
    with pytest.raises(ValueError, match="dicts of model inputs"):
        prepare_model(tiny_vit(), SmartConfig(score_init="activation"), calibration_data=[torch.randn(2, 3, 16, 16)])
