"""The lifecycle on tiny ViT / BERT / GPT-2 (Conv1D) / ResNet (Conv2d): search, harden, squash, reload with stock
transformers; budgets, the layer guard, modes, deepcopy."""

import copy
import math

import pytest
import torch
from tiny_models import MODELS, tiny_gpt2, tiny_vit, vit_inputs

from smart_hf import (
    SmartConfig,
    apply_hard_masks_,
    get_smart_state,
    harden,
    prepare_model,
    score_parameter_groups,
    set_mode,
    set_temperature,
    sparsity_report,
    squash,
    update_temperature,
    zero_pruned_optimizer_state,
)
from smart_hf.core.budget import global_weight_budget, layer_keep_units, reserved_units
from smart_hf.core.granularity import canonical_weight

CASES = [
    ("vit", {"pattern": "block", "block_shape": [4, 4], "sparsity": 0.5}),
    ("vit", {"pattern": "channel", "sparsity": 0.4}),
    ("vit", {"pattern": "nm"}),
    ("bert", {"pattern": "block", "block_shape": [4, 4], "sparsity": 0.6}),
    ("bert", {"pattern": "nm", "n": 1, "m": 4}),
    ("gpt2", {"pattern": "block", "block_shape": [4, 4], "sparsity": 0.5}),
    ("gpt2", {"pattern": "channel", "sparsity": 0.5}),
    ("gpt2", {"pattern": "nm"}),
    ("resnet", {"pattern": "block", "block_shape": [2, 2], "sparsity": 0.5}),
    ("resnet", {"pattern": "channel", "sparsity": 0.3}),
    ("resnet", {"pattern": "nm"}),
]


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _kept_weights(layer) -> int:
    return int((layer.weight != 0).sum())


def _nm_group_counts(layer) -> torch.Tensor:
    """Non-zeros per N:M group of the stored weight (groups along the input dim at each output/kernel position)."""
    layout = layer.smart_layout
    return layout.unit_sum(canonical_weight(layer.weight != 0, layout.kind).float()).sum(-1)


@pytest.mark.parametrize(("arch", "kwargs"), CASES, ids=[f"{a}-{k['pattern']}" for a, k in CASES])
def test_search_harden_squash_reload(arch, kwargs, tmp_path):
    factory, make_inputs, auto_class = MODELS[arch]
    model = factory().eval()
    original_keys = set(model.state_dict())
    config = SmartConfig(**kwargs)
    prepare_model(model, config)
    state = get_smart_state(model)
    inputs = make_inputs()

    # soft search step: every layer's scores receive a gradient
    model(**inputs).logits.float().square().mean().backward()
    for layer in state.layers:
        grad = layer.smart_scores.grad
        assert grad is not None and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, f"no gradient reached {layer.smart_layout}"

    # harden: binary masks, exact budgets
    harden(model)
    assert all(not layer.smart_scores.requires_grad for layer in state.layers)
    for layer in state.layers:
        assert set(layer.smart_mask.unique().tolist()) <= {0.0, 1.0}
    if config.pattern == "nm":
        for layer in state.layers:
            assert (_nm_group_counts(layer) == config.n).all()
    else:
        total = sum(layer.smart_layout.num_weights for layer in state.layers)
        kept = sum(_kept_weights(layer) for layer in state.layers)
        target = global_weight_budget(total, config.sparsity)
        largest_unit = max(layer.smart_layout.unit_cost for layer in state.layers)
        assert abs(kept - target) <= largest_unit, (kept, target, largest_unit)
    report = sparsity_report(model)
    assert report["valid"] and report["mode"] == "hard"
    hard_logits = _logits(model, inputs)

    # squash -> save -> stock from_pretrained
    squash(model)
    assert set(model.state_dict()) == original_keys
    assert not any(hasattr(m, "smart_scores") for m in model.modules())
    torch.testing.assert_close(_logits(model, inputs), hard_logits, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    torch.testing.assert_close(_logits(reloaded, inputs), hard_logits, atol=1e-5, rtol=0)
    reloaded_report = sparsity_report(reloaded)
    assert reloaded_report["valid"] and reloaded_report["mode"] == "squashed"
    assert reloaded_report["total"]["sparsity"] == pytest.approx(report["total"]["sparsity"])


def test_per_layer_budget_is_exact_per_layer():
    model = prepare_model(tiny_vit(), SmartConfig(budget="layer", block_shape=[2, 4], sparsity=0.7))
    harden(model)
    for layer in get_smart_state(model).layers:
        layout = layer.smart_layout
        kept_units = int(layer.smart_mask.sum())
        assert kept_units == layer_keep_units(layout.num_units, 0.7)
        assert _kept_weights(layer) == kept_units * layout.unit_cost


def test_soft_mask_at_tiny_tau_equals_the_hard_mask():
    torch.manual_seed(0)
    model = prepare_model(tiny_vit(), SmartConfig(block_shape=[4, 4], sparsity=0.5))
    inputs = vit_inputs()
    set_temperature(model, 1e-6)
    soft = _logits(model, inputs)
    harden(model)
    torch.testing.assert_close(_logits(model, inputs), soft, atol=1e-5, rtol=0)


def test_min_layer_density_keeps_every_layer_alive_at_95_percent():
    model = prepare_model(tiny_vit(), SmartConfig(block_shape=[2, 2], sparsity=0.95, min_layer_density=0.03))
    state = get_smart_state(model)
    starved = model.vit.layers[1].mlp.fc2
    with torch.no_grad():  # the global ranking alone would drop this layer entirely
        starved.smart_scores.fill_(-100.0)
    model(**vit_inputs()).logits.sum().backward()  # the soft search runs with the guard too
    harden(model)
    for layer in state.layers:
        units = layer.smart_layout.num_units
        assert int(layer.smart_mask.sum()) >= reserved_units(units, 0.03) >= math.ceil(0.03 * units)
    assert int(starved.smart_mask.sum()) == reserved_units(starved.smart_layout.num_units, 0.03)
    report = sparsity_report(model)
    assert report["valid"] and abs(report["total"]["sparsity"] - 0.95) < 4 / report["total"]["weights"] + 1e-12


def test_without_a_guard_a_starved_layer_still_keeps_one_unit():
    model = prepare_model(tiny_vit(), SmartConfig(pattern="channel", sparsity=0.9))
    starved = model.vit.layers[0].attention.q_proj
    with torch.no_grad():
        starved.smart_scores.fill_(-100.0)
    harden(model)
    assert int(starved.smart_mask.sum()) == 1


def test_deepcopy_gives_the_same_output_and_is_independent():
    model = prepare_model(tiny_vit(), SmartConfig(sparsity=0.5))
    set_temperature(model, 0.3)
    inputs = vit_inputs()
    clone = copy.deepcopy(model)
    torch.testing.assert_close(_logits(clone, inputs), _logits(model, inputs), atol=0, rtol=0)
    assert get_smart_state(clone) is not get_smart_state(model)
    assert clone.vit.layers[0].mlp.fc1._smart_state is get_smart_state(clone)
    set_temperature(clone, 1e-3)
    assert get_smart_state(model).tau == 0.3
    squash(clone)  # removes the copy's hooks, not the original's
    assert len(model._forward_pre_hooks) == 1 and len(clone._forward_pre_hooks) == 0
    assert model(**inputs).logits.shape == (2, 3)


def test_dense_mode_gives_the_unmasked_output():
    torch.manual_seed(0)
    dense = tiny_vit().eval()
    inputs = vit_inputs()
    expected = _logits(dense, inputs)
    model = prepare_model(copy.deepcopy(dense), SmartConfig(sparsity=0.7))
    assert (_logits(model, inputs) - expected).abs().max() > 1e-3  # soft masks change the function
    set_mode(model, "dense")
    torch.testing.assert_close(_logits(model, inputs), expected, atol=0, rtol=0)
    set_mode(model, "soft")
    assert (_logits(model, inputs) - expected).abs().max() > 1e-3


def test_modes_and_errors():
    model = prepare_model(tiny_vit(), SmartConfig())
    with pytest.raises(ValueError, match="harden"):
        set_mode(model, "hard")
    with pytest.raises(ValueError, match="mode must be one of"):
        set_mode(model, "search")
    with pytest.raises(ValueError, match="call smart_hf.harden"):
        apply_hard_masks_(model)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        set_temperature(model, 0.0)
    for bad in (math.inf, math.nan, True, "1"):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            set_temperature(model, bad)
    with pytest.raises(ValueError, match="not prepared"):
        get_smart_state(tiny_vit())
    harden(model)
    harden(model)  # idempotent
    with pytest.raises(ValueError, match="already hardened"):
        set_mode(model, "dense")


def test_fine_tuning_keeps_pruned_weights_zero():
    model = prepare_model(tiny_gpt2(), SmartConfig(pattern="nm"))
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "smart_" not in n], lr=1e-2)
    model(**MODELS["gpt2"][1]()).logits.square().mean().backward()
    opt.step()  # search-stage momentum would push pruned weights away from zero
    opt.zero_grad()
    harden(model)
    for _ in range(2):
        model(**MODELS["gpt2"][1]()).logits.square().mean().backward()
        opt.step()
        opt.zero_grad()
        apply_hard_masks_(model)
    report = sparsity_report(model)
    assert report["valid"] and report["total"]["sparsity"] == 0.5
    for layer in get_smart_state(model).layers:
        assert (_nm_group_counts(layer) == 2).all()


def test_state_dict_round_trip_restores_temperature_and_mode():
    model = prepare_model(tiny_vit(), SmartConfig())
    set_temperature(model, 0.01)
    twin = prepare_model(tiny_vit(), SmartConfig())
    twin.load_state_dict(model.state_dict())
    assert get_smart_state(twin).tau == 0.01
    inputs = vit_inputs()
    torch.testing.assert_close(_logits(twin, inputs), _logits(model, inputs), atol=0, rtol=0)


def test_prepared_model_pickles():
    import io

    model = prepare_model(tiny_vit(), SmartConfig())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    inputs = vit_inputs()
    torch.testing.assert_close(_logits(loaded, inputs), _logits(model, inputs), atol=0, rtol=0)


def test_dynamic_jitter_is_seeded_and_reproducible():
    def run():
        torch.manual_seed(123)  # identical models; the jitter must not depend on the global RNG
        model = prepare_model(
            tiny_vit(),
            SmartConfig(score_init="constant", temperature_schedule="dynamic", dynamic_window=2, score_seed=7),
        )
        inputs = vit_inputs()
        for step in range(12):
            update_temperature(model, step, 12)
            torch.manual_seed(step * 999)  # perturb the global RNG between steps
            model(**inputs)
        return [layer.smart_scores.detach().clone() for layer in get_smart_state(model).layers]

    first, second = run(), run()
    assert any(s.abs().max() > 0 for s in first)  # jitter happened
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_activation_init_with_calibration_batches_runs_the_lifecycle():
    factory, make_inputs, _ = MODELS["bert"]
    calibration = [make_inputs(4) for _ in range(4)]
    model = prepare_model(
        factory(),
        SmartConfig(score_init="activation", calibration_batches=2, sparsity=0.5),
        calibration_data=iter(calibration),  # any iterable of input dicts; only 2 batches are read
    )
    state = get_smart_state(model)
    assert all(torch.isfinite(layer.smart_scores).all() for layer in state.layers)
    model(**make_inputs()).logits.sum().backward()
    assert all(layer.smart_scores.grad is not None for layer in state.layers)
    harden(model)
    assert sparsity_report(model)["total"]["sparsity"] == pytest.approx(0.5, abs=16 / 30000)


def test_fsdp1_wrapper_is_a_clear_error():
    """FSDP1's flat parameters hide the per-layer weights and scores: refuse it and name FSDP2."""
    model = prepare_model(tiny_vit(), SmartConfig())
    FullyShardedDataParallel = type("FullyShardedDataParallel", (torch.nn.Module,), {})
    wrapper = FullyShardedDataParallel()
    wrapper.module = model
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        get_smart_state(wrapper)


# --- score_parameter_groups: the scores' learning rates ---


def _mixed_model(**config):
    """A tiny ViT with 2:4 on the fc1 layers and 4x4 blocks (global budget) everywhere else."""
    return prepare_model(tiny_vit(), SmartConfig(overrides=[{"regex": r".*fc1", "pattern": "nm"}], **config))


def _score_ids(groups):
    return sorted(id(p) for group in groups for p in group["params"])


def test_score_parameter_groups_default_rates_per_kind():
    """Unset: 0.2 for the N:M groups and 1.0 for the rest, in start-logit units; every score once, no decay."""
    model = _mixed_model()
    state = get_smart_state(model)
    groups = score_parameter_groups(model)
    assert sorted(g["lr"] for g in groups) == [0.2, 1.0] and all(g["weight_decay"] == 0.0 for g in groups)
    assert _score_ids(groups) == sorted(id(layer.smart_scores) for layer in state.layers)
    nm = {id(layer.smart_scores) for layer in state.layers if layer.smart_layout.pattern == "nm"}
    assert {id(p) for g in groups if g["lr"] == 0.2 for p in g["params"]} == nm
    (single,) = score_parameter_groups(model, lr=0.05)  # a number is used as is, for every score
    assert single["lr"] == 0.05 and _score_ids([single]) == _score_ids(groups)


def test_score_parameter_groups_convert_to_the_scores_units():
    """A fixed tau_start multiplies the default rates by it; score_scale="standardized" by each group's start
    temperature: the same step of the start logits m / tau0 in every case."""
    fixed = score_parameter_groups(_mixed_model(tau_start=0.5))
    assert sorted(g["lr"] for g in fixed) == pytest.approx([0.1, 0.5])
    model = _mixed_model(score_scale="standardized")
    state = get_smart_state(model)
    expected = sorted(
        (0.2 if g.kind == "nm" else 1.0) * state.group_temperature(i) for i, g in enumerate(state.groups)
    )
    assert sorted(g["lr"] for g in score_parameter_groups(model)) == pytest.approx(sorted(set(expected)))


def test_score_parameter_groups_skip_frozen_scores():
    model = _mixed_model()
    harden(model)  # freezes the scores
    assert score_parameter_groups(model) == []


def test_zero_pruned_optimizer_state_masks_the_moments_of_pruned_weights_only():
    """Adam's moments shaped like a weight are zeroed at its pruned entries (through accelerate's ``.optimizer``
    wrapper too); the kept entries and the step counts are left alone."""
    torch.manual_seed(0)
    model = prepare_model(tiny_vit(), SmartConfig(pattern="nm"))
    optimizer = torch.optim.AdamW(model.parameters())
    model(**vit_inputs()).logits.sum().backward()
    optimizer.step()
    harden(model)
    layers = get_smart_state(model).layers
    before = {id(layer): {k: v.clone() for k, v in optimizer.state[layer.weight].items()} for layer in layers}

    class Wrapped:  # what accelerate's AcceleratedOptimizer looks like from here
        def __init__(self, inner):
            self.optimizer = inner

    zero_pruned_optimizer_state(model, Wrapped(optimizer))
    zero_pruned_optimizer_state(model, None)  # no optimizer: nothing to do
    for layer in layers:
        kept = layer.smart_layout.apply(torch.ones_like(layer.weight), layer.smart_mask).bool()
        for name, value in optimizer.state[layer.weight].items():
            old = before[id(layer)][name]
            if value.shape != layer.weight.shape:
                assert torch.equal(value, old)  # the step count
                continue
            assert torch.all(value[~kept] == 0) and torch.equal(value[kept], old[kept])
            assert bool((old[~kept] != 0).any())  # there was something to zero
