"""Fisher importance of coupled units (``score_init="fisher"``): per-example mask gradients, scores across layers."""

import pytest
import torch
from tiny_models import resnet_inputs, text_inputs, tiny_bert, tiny_gpt2, tiny_resnet

from smart_hf import SmartConfig, get_smart_state, is_prepared, prepare_model, reinit_scores
from smart_hf.fisher import unit_fisher
from smart_hf.scores import fisher_log_importance


def _labelled(model, inputs, batch=4):
    torch.manual_seed(0)
    x = inputs(batch)
    if "pixel_values" in x:
        return {**x, "labels": torch.randint(0, 3, (batch,))}
    return {**x, "labels": x["input_ids"] if model.config.model_type == "gpt2" else torch.randint(0, 3, (batch,))}


def _reference_fisher(model, layer, batch) -> torch.Tensor:
    """``sum_i (d loss_i / d m_u)^2`` from per-example *weight* gradients: scaling a unit's input columns by ``m``
    scales those weight columns, so ``d loss_i / d m_u = sum over the unit's columns of W * dL_i/dW``."""
    binding = layer.__dict__["_smart_coupled"]
    member = binding.cset.member(binding.cset.owner)
    size = batch["labels"].shape[0]
    total = torch.zeros(binding.cset.units, dtype=torch.float64)
    for i in range(size):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        model.zero_grad()
        model(**one).loss.backward()
        wg = (layer.weight * layer.weight.grad).detach().double()
        per_column = wg.sum(1) if type(layer).__name__ == "SmartConv1D" else wg.sum(0)  # Conv1D: (in, out)
        if per_column.dim() > 1:  # a conv: (in, kh, kw)
            per_column = per_column.sum((1, 2))
        per_unit = per_column.reshape(member.chunks, binding.cset.units, member.width).sum((0, 2))
        total += per_unit.square()
    return total


@pytest.mark.parametrize(
    "build, inputs", [(tiny_bert, text_inputs), (tiny_gpt2, text_inputs), (tiny_resnet, resnet_inputs)]
)
def test_unit_fisher_equals_per_example_weight_gradients(build, inputs):
    torch.manual_seed(0)
    model = build()
    batch = _labelled(model, inputs)
    prepare_model(model, SmartConfig(pattern="coupled", sparsity=0.5))
    state = get_smart_state(model)
    state.set_mode("dense")
    fisher = unit_fisher(model, state.layers, [batch], max_batches=1)
    model.eval()
    for layer, got in zip(state.layers, fisher):
        expected = _reference_fisher(model, layer, batch).float()
        assert got.shape == expected.shape and float(expected.sum()) > 0
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-10)
    assert model.training is False  # left as the caller had it (eval here)


def test_fisher_scores_are_one_affine_map_of_log_fisher_per_cost_across_layers():
    """No layer-relative scaling: every layer's scores follow the same increasing affine function of
    ``log(I_u / c_u)``, so a layer of small Fisher scores low as a whole (magnitude scores are centred per layer)."""
    model = tiny_bert()
    batch = _labelled(model, text_inputs, 8)
    prepare_model(model, SmartConfig(pattern="coupled", sparsity=0.5, score_init="fisher"), calibration_data=[batch])
    state = get_smart_state(model)
    state.set_mode("dense")
    fisher = unit_fisher(model, state.layers, [batch], max_batches=1)
    for group in state.groups:
        x = torch.cat([fisher_log_importance(layer, fisher[state.layers.index(layer)]).reshape(-1) for layer in group.layers])
        s = torch.cat([layer.smart_scores.detach().reshape(-1) for layer in group.layers])
        design = torch.stack([x.reshape(-1), torch.ones(x.numel())], 1).double()
        coef = torch.linalg.lstsq(design, s.double().reshape(-1, 1)).solution
        assert float(coef[0]) > 0
        torch.testing.assert_close((design @ coef).reshape(-1), s.double(), rtol=0, atol=1e-4)
        layer_means = [float(layer.smart_scores.detach().mean()) for layer in group.layers]
        assert max(layer_means) - min(layer_means) > 0.1  # not centred per layer


def test_reinit_scores_recomputes_fisher_on_the_current_weights():
    model = tiny_bert()
    batch = _labelled(model, text_inputs, 8)
    prepare_model(model, SmartConfig(pattern="coupled", sparsity=0.5, score_init="fisher"), calibration_data=[batch])
    before = [layer.smart_scores.detach().clone() for layer in get_smart_state(model).layers]
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight.mul_(3.0)
    reinit_scores(model, calibration_data=[batch])
    after = [layer.smart_scores.detach() for layer in get_smart_state(model).layers]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="score_init='fisher' needs calibration_data"):
        reinit_scores(model)


def test_fisher_needs_coupled_units_and_labelled_batches():
    with pytest.raises(ValueError, match="use pattern='coupled'"):
        SmartConfig(pattern="nm", score_init="fisher")
    config = SmartConfig(pattern="coupled", sparsity=0.5, score_init="fisher")
    model = tiny_bert()
    with pytest.raises(ValueError, match="needs calibration_data .* with labels"):
        prepare_model(model, config)
    with pytest.raises(ValueError, match="add 'labels' to the batches"):
        prepare_model(model, config, calibration_data=[text_inputs(4)])
    assert not is_prepared(model)  # a failed prepare leaves the model as it came
    with pytest.raises(ValueError, match="no batches"):
        prepare_model(model, config, calibration_data=[])
    assert not is_prepared(model)
