"""Temperature schedules and the dynamic rule (pure functions), plus the dynamic-rule demonstration on a model."""

import math

import pytest
import torch
from tiny_models import tiny_vit

from smart_hf import SmartConfig, get_smart_state, prepare_model, update_temperature
from smart_hf.core.schedule import MIN_TEMPERATURE, DynamicState, dynamic_update, temperature_at

DECAYING = ["exponential", "cosine", "linear", "dynamic"]


@pytest.mark.parametrize("schedule", DECAYING)
def test_endpoints(schedule):
    assert temperature_at(0, 100, 1.0, 1e-4, schedule) == pytest.approx(1.0)
    assert temperature_at(100, 100, 1.0, 1e-4, schedule) == pytest.approx(1e-4)
    # clamped outside [0, total]
    assert temperature_at(-5, 100, 1.0, 1e-4, schedule) == pytest.approx(1.0)
    assert temperature_at(250, 100, 1.0, 1e-4, schedule) == pytest.approx(1e-4)


@pytest.mark.parametrize("schedule", DECAYING)
def test_monotone_decay(schedule):
    taus = [temperature_at(step, 200, 2.0, 1e-3, schedule) for step in range(201)]
    assert all(a > b for a, b in zip(taus, taus[1:])), schedule


def test_exponential_is_geometric_and_others_have_their_shape():
    taus = [temperature_at(s, 10, 1.0, 1e-4, "exponential") for s in range(11)]
    ratios = [b / a for a, b in zip(taus, taus[1:])]
    assert max(ratios) - min(ratios) < 1e-12 and ratios[0] == pytest.approx(10 ** (-0.4))
    assert temperature_at(5, 10, 1.0, 0.0001, "linear") == pytest.approx(0.50005)
    assert temperature_at(5, 10, 1.0, 0.0001, "cosine") == pytest.approx(0.50005)
    assert temperature_at(2, 10, 1.0, 0.0001, "cosine") > temperature_at(2, 10, 1.0, 0.0001, "linear")
    assert temperature_at(5, 10, 1.0, 0.0001, "dynamic") == temperature_at(5, 10, 1.0, 0.0001, "exponential")


def test_constant_and_degenerate_totals():
    assert all(temperature_at(s, 50, 0.3, 1e-4, "constant") == 0.3 for s in range(60))
    assert temperature_at(0, 0, 1.0, 1e-2, "exponential") == pytest.approx(1.0)  # total 0: no division by zero
    assert temperature_at(1, 0, 1.0, 1e-2, "exponential") == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="schedule"):
        temperature_at(0, 10, 1.0, 1e-2, "step")


# --- dynamic_update: cuts only when stuck ---


def test_dynamic_update_waits_for_a_full_window():
    state = DynamicState()
    for step in range(10):
        new, cut = dynamic_update(state, step, 0.4, window=10, min_decrease=0.05, cut=0.5)
        assert new is state and not cut


def test_dynamic_update_first_check_sets_the_reference_without_cutting():
    new, cut = dynamic_update(DynamicState(), 10, 0.4, window=10, min_decrease=0.05, cut=0.5)
    assert not cut and new.scale == 1.0 and new.ref_fractionality == 0.4 and new.ref_step == 10


def test_dynamic_update_cuts_only_when_stuck():
    ref = DynamicState(scale=1.0, ref_fractionality=0.4, ref_step=10)
    # fell by 10% > 5%: progress, no cut
    new, cut = dynamic_update(ref, 20, 0.36, window=10, min_decrease=0.05, cut=0.5)
    assert not cut and new.scale == 1.0 and new.ref_fractionality == 0.36
    # fell by 2.5% < 5%: stuck, cut
    new, cut = dynamic_update(ref, 20, 0.39, window=10, min_decrease=0.05, cut=0.5)
    assert cut and new.scale == 0.5 and new.ref_step == 20
    # rose: stuck, cut again (scales multiply)
    new2, cut2 = dynamic_update(new, 30, 0.45, window=10, min_decrease=0.05, cut=0.5)
    assert cut2 and new2.scale == 0.25
    # already binary: nothing left to escape from
    new3, cut3 = dynamic_update(DynamicState(0.5, 1e-5, 10), 20, 1e-5, window=10, min_decrease=0.05, cut=0.5)
    assert not cut3 and new3.scale == 0.5


# --- the demonstration: uniform scores, no informative gradient ---


def _search_without_gradient(schedule: str, steps: int = 60, jitter: float = 0.1) -> tuple[float, float]:
    """Prepare a tiny ViT with uniform scores and run the search with forwards only (scores never get a gradient
    step): returns (final fractionality, final tau)."""
    torch.manual_seed(0)
    model = tiny_vit()
    config = SmartConfig(
        pattern="block",
        block_shape=[4, 4],
        sparsity=0.5,
        score_init="constant",
        score_noise=0.0,
        temperature_schedule=schedule,
        tau_start=1.0,
        tau_end=1.0 if schedule == "constant" else 1e-4,
        dynamic_window=5,
        budget_anneal=0.0,  # the dynamic rule in isolation: it waits while the budget anneals
        dynamic_jitter=jitter,
    )
    prepare_model(model, config)
    pixels = torch.randn(2, 3, 16, 16)
    tau = None
    for step in range(steps):
        tau = update_temperature(model, step, steps)
        model(pixel_values=pixels)  # grad mode on: the forward records the fractionality
    return get_smart_state(model).fractionality(), tau


def test_dynamic_rule_escapes_the_uniform_stationary_point():
    """Uniform scores are stationary at every tau: a constant or merely decaying tau leaves the mask at ~k/N, the
    dynamic rule (cut tau + jitter when the fractionality stalls) ends with a binary mask. Numbers: docs/method.md."""
    frac_constant, tau_constant = _search_without_gradient("constant")
    frac_exponential, _ = _search_without_gradient("exponential")
    frac_dynamic, tau_dynamic = _search_without_gradient("dynamic")
    frac_no_jitter, tau_no_jitter = _search_without_gradient("dynamic", jitter=0.0)
    # 0.5 * (1 - reserved share): each layer's one reserved unit is exactly 1
    assert frac_constant > 0.45 and tau_constant == 1.0
    assert frac_exponential == pytest.approx(frac_constant, abs=1e-6)
    assert frac_dynamic < 1e-2
    assert MIN_TEMPERATURE <= tau_dynamic < 1e-4  # the rule cut tau below the exponential base
    # cutting tau alone cannot break exact ties: the jitter is what moves the mask off the stationary point
    assert frac_no_jitter == pytest.approx(frac_constant, abs=1e-6) and tau_no_jitter < tau_dynamic


def test_toy_sparse_regression_fixed_tau_stays_fractional_dynamic_ends_binary():
    """method.md §2.5's toy: 20 correlated features, keep 5, minibatch SGD on L(w * f_tau(m)) from uniform scores."""
    results = {schedule: _toy_regression(schedule) for schedule in ["constant", "dynamic"]}
    frac_fixed, support_fixed, best = results["constant"]
    frac_dynamic, support_dynamic, _ = results["dynamic"]
    assert frac_fixed > 0.15  # still far from a mask (0 = binary)
    assert frac_dynamic < 1e-2
    assert support_dynamic == best  # and the binary mask found the planted support


def _toy_regression(schedule: str, steps: int = 400):
    g = torch.Generator().manual_seed(0)
    n_features, keep, n = 20, 5, 256
    x = torch.randn(n, n_features, generator=g)
    x[:, 10:] = 0.6 * x[:, :10] + 0.8 * x[:, 10:]  # correlated pairs
    w_true = torch.zeros(n_features)
    support = torch.randperm(n_features, generator=g)[:keep]
    w_true[support] = torch.randn(keep, generator=g).sign() * (0.5 + torch.rand(keep, generator=g))
    y = x @ w_true + 0.3 * torch.randn(n, generator=g)

    model = torch.nn.Sequential(torch.nn.Linear(n_features, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.t())
    config = SmartConfig(
        pattern="block",
        block_shape=[1, 1],
        sparsity=1 - keep / n_features,
        budget="layer",
        score_init="constant",
        score_noise=0.0,
        temperature_schedule=schedule,
        tau_start=1.0,
        tau_end=1.0 if schedule == "constant" else 1e-3,
    )
    prepare_model(model, config)
    layer = model[0]
    opt = torch.optim.SGD([{"params": [layer.weight], "lr": 0.01}, {"params": [layer.smart_scores], "lr": 0.05}])
    for step in range(steps):
        update_temperature(model, step, steps)
        batch = torch.randint(0, n, (32,), generator=g)
        loss = (model(x[batch])[:, 0] - y[batch]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    frac = get_smart_state(model).fractionality()
    chosen = set(layer.smart_scores.detach()[0].topk(keep).indices.tolist())
    return frac, chosen, set(support.tolist())


def test_update_temperature_follows_the_schedule_and_clamps():
    torch.manual_seed(0)
    model = tiny_vit()
    prepare_model(model, SmartConfig(temperature_schedule="exponential", tau_start=1.0, tau_end=1e-8 + 1e-9))
    assert update_temperature(model, 0, 10) == pytest.approx(1.0)
    assert update_temperature(model, 5, 10) == pytest.approx(math.sqrt(1.1e-8))
    assert update_temperature(model, 10, 10) == MIN_TEMPERATURE  # never below what the operator is tested at
    assert get_smart_state(model).tau == MIN_TEMPERATURE
