"""The search starts where one-shot pruning ends (auto start temperature, budget anneal)."""

import math

import pytest
import torch
from tiny_models import tiny_bert, tiny_vit

from smart_hf import SmartConfig, get_smart_state, harden, prepare_model, update_temperature
from smart_hf.core.budget import annealed_budget, budget_progress
from smart_hf.core.schedule import auto_temperature
from smart_hf.core.topk import soft_topk


def _fractionality(f: torch.Tensor) -> float:
    return float(torch.minimum(f, 1 - f).mean())


def test_budget_progress_is_cubic_then_held():
    assert budget_progress(0, 30, 2 / 3) == 0.0
    assert budget_progress(10, 30, 2 / 3) == pytest.approx(1 - 0.5**3)
    assert budget_progress(20, 30, 2 / 3) == 1.0 and budget_progress(29, 30, 2 / 3) == 1.0
    assert budget_progress(0, 30, 0.0) == 1.0  # no anneal: the target from the first step
    values = [budget_progress(s, 30, 2 / 3) for s in range(31)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="anneal_fraction"):
        budget_progress(0, 30, 1.5)


def test_annealed_budget_interpolates_from_capacity_to_target():
    assert annealed_budget(2.0, 4.0, 0.0) == 4.0
    assert annealed_budget(2.0, 4.0, 0.5) == 3.0
    assert annealed_budget(2.0, 4.0, 1.0) == 2.0


def test_auto_temperature_hits_the_target_fractionality():
    scores = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    for target in (0.02, 0.05, 0.2):
        tau = auto_temperature(lambda t: _fractionality(soft_topk(scores, 2.0, t)), target)
        assert _fractionality(soft_topk(scores, 2.0, tau)) == pytest.approx(target, rel=1e-3)
    # at 90% sparsity no mask is more fractional than ~0.1: a target of 0.2 means half of the uniform mask's
    tau = auto_temperature(lambda t: _fractionality(soft_topk(scores.reshape(1, -1), 200.0, t)), 0.2)
    uniform = _fractionality(soft_topk(scores.reshape(1, -1), 200.0, 1e4))
    assert _fractionality(soft_topk(scores.reshape(1, -1), 200.0, tau)) == pytest.approx(uniform / 2, rel=1e-3)
    # tied scores are k/N at every tau: no tau reaches the target, fall back to 1
    assert auto_temperature(lambda t: _fractionality(soft_topk(torch.zeros(8, 4), 2.0, t)), 0.05) == 1.0
    with pytest.raises(ValueError, match="target fractionality"):
        auto_temperature(lambda t: 0.0, 0.6)


@pytest.mark.parametrize("k, shape", [(2.0, (2000, 4)), (1.0, (2000, 4)), (400.0, (1, 4000)), (3000.0, (1, 4000))])
def test_auto_temperature_needs_few_soft_topk_evaluations(k, shape):
    """Each evaluation is a soft top-k over every unit of the group (seconds on a BERT-base-sized model), so the
    root is found by Dekker's method (secant steps guarded by bisection) in log-log coordinates: 7-10 evaluations
    where bisection over [1e-6, 1e4] took 42."""
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).double()
    taus = []

    def fractionality_at(tau):
        taus.append(tau)
        return _fractionality(soft_topk(scores, k, tau))

    tau = auto_temperature(fractionality_at, 0.05)
    assert _fractionality(soft_topk(scores, k, tau)) == pytest.approx(0.05, rel=2e-4)
    assert len(taus) <= 16, taus


@pytest.mark.parametrize("kwargs", [{"pattern": "nm"}, {"block_shape": [2, 4], "sparsity": 0.75}])
def test_default_start_fractionality_is_the_target(kwargs):
    """Every budget group starts at the target fractionality; the N:M groups of one row shape share one temperature
    (one batched solve per forward), calibrated on all their rows together."""
    model = prepare_model(tiny_vit(), SmartConfig(**kwargs))
    state = get_smart_state(model)
    assert state.smart_config.tau_start is None  # the default is "auto"
    sets = state._temperature_sets()
    for members in sets:
        masks = [m for gi in members for m in state._soft_masks(gi, state.group_temperature(gi), state.groups[gi].k)]
        frac = sum(float(torch.minimum(m, 1 - m).detach().sum()) for m in masks) / sum(m.numel() for m in masks)
        assert frac == pytest.approx(0.05, rel=1e-2)
        assert len({state._group_tau[gi] for gi in members}) == 1
    if kwargs.get("pattern") == "nm":
        assert len(sets) == 1 and len(sets[0]) == len(state.groups) > 1  # all N:M layers of the ViT: one set
    else:
        assert len(set(state._group_tau)) == len(state.groups)  # one temperature per budget group


@pytest.mark.parametrize(
    "kwargs", [{"pattern": "nm"}, {"block_shape": [2, 4], "sparsity": 0.9}, {"pattern": "channel"}]
)
def test_first_search_step_is_the_dense_model_and_the_anneal_reaches_the_target(kwargs):
    """Default config (budget anneal): step 0 keeps everything, so the first soft forward equals the dense model;
    after the anneal the soft budget is the target; hardening then keeps exactly the target."""
    torch.manual_seed(0)
    model = tiny_bert().eval()  # no dropout: compare exact outputs
    inputs = {"input_ids": torch.randint(0, 100, (2, 8))}
    with torch.no_grad():
        dense = model(**inputs).logits
    prepare_model(model, SmartConfig(**kwargs))
    update_temperature(model, 0, 30)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, dense, atol=1e-6)
    state = get_smart_state(model)
    update_temperature(model, 20, 30)
    assert state._progress == 1.0
    for group in state.groups:
        assert state.soft_budget(group) == group.k
    harden(model)


def test_budget_anneal_zero_starts_at_the_target():
    model = prepare_model(tiny_vit(), SmartConfig(pattern="nm", budget_anneal=0.0))
    update_temperature(model, 0, 30)
    state = get_smart_state(model)
    masks = state.soft_group_masks(0)
    assert float(masks[0].detach().sum(-1).mean()) == pytest.approx(2.0, rel=1e-5)  # 2 of every 4 kept from step 0


def test_tau_start_auto_spelling_and_bad_values():
    assert SmartConfig(tau_start="auto").tau_start is None
    assert SmartConfig(tau_start=0.5).tau_start == 0.5
    with pytest.raises(ValueError, match="tau_start_fractionality"):
        SmartConfig(tau_start_fractionality=0.5)
    with pytest.raises(ValueError, match="budget_anneal"):
        SmartConfig(budget_anneal=-0.1)
    with pytest.raises(TypeError, match="budget_anneal"):
        SmartConfig(budget_anneal="2/3")
    assert math.isfinite(SmartConfig().tau_end)
