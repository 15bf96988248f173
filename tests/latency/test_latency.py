"""`smart_hf.latency`: the latency model (blocks, fits, cache keys), the time budget of a speed target, width
rounding at hardening, noisy-measurement warnings and the slim-vs-dense speed-up record. No timing is asserted:
speed goals live in benchmarks/speed_target.py."""

import copy
import json
import warnings

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_llama, tiny_resnet, tiny_vit
from transformers import BertConfig, BertForSequenceClassification

import smart_hf as sh
from smart_hf.coupling import CoupledSet, coupled_unit_cost, find_coupled_sets
from smart_hf.latency import (
    NS,
    block_seconds_for,
    latency_inputs,
    measure_latency_model,
    measure_speedup,
    predicted_seconds,
    speed_budget,
    whole_seconds,
    width_grid,
)
from smart_hf.latency.blocks import capture_input_shapes, rebuild_block
from smart_hf.latency.timing import spread, warn_if_noisy


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SMART_HF_CACHE", str(tmp_path / "cache"))


def _measure(model, batch=2, seq=8, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shared test machine may be busy: the spread warning is tested below
        return measure_latency_model(model, find_coupled_sets(model), batch, seq, max_seconds=0.05, **kw)


def _fake_latency():
    """Two FFN blocks (10 units, 2 ms + 0.1 ms/unit) and one head block (4 units, 1 ms/unit), 3 ms fixed."""
    blocks = {
        "f": {"kind": "ffn", "units": 10, "a": 2e-3, "b": 1e-4},
        "h": {"kind": "heads", "units": 4, "a": 0.0, "b": 1e-3},
    }
    owners = {"f0": "f", "f1": "f", "h0": "h"}
    dense = 3e-3 + 2 * (2e-3 + 10 * 1e-4) + 4 * 1e-3
    return {"dense_seconds": dense, "fixed_seconds": 3e-3, "blocks": blocks, "owners": owners}


def test_predicted_time_is_dense_at_full_width_and_the_budget_meets_the_target():
    lat = _fake_latency()
    assert predicted_seconds(lat, {}) == pytest.approx(lat["dense_seconds"])
    budget = speed_budget(lat, ["f0", "f1", "h0"], [1, 1, 1], 1, target=1.5)
    assert budget["unit_cost_ns"] == pytest.approx([1e-4 * NS, 1e-4 * NS, 1e-3 * NS])
    capacity = 2 * 10 * 1e-4 + 4 * 1e-3
    k = (1 - budget["sparsity"]) * capacity  # the time the kept units may spend
    kept_time = predicted_seconds(lat, {"f0": 0, "f1": 0, "h0": 0}) + k
    assert lat["dense_seconds"] / kept_time == pytest.approx(1.5)


def test_an_unreachable_target_names_the_largest_reachable_speed_up():
    lat = _fake_latency()
    fastest = 3e-3 + 2 * (2e-3 + 8 * 1e-4) + 1e-3  # FFN floors at 8 (width multiple), one head
    best = lat["dense_seconds"] / fastest
    with pytest.raises(ValueError, match=f"run {best:.2f}x faster") as err:
        speed_budget(lat, ["f0", "f1", "h0"], [1, 1, 1], 8, target=best + 0.05)
    assert "Ask for at most" in str(err.value) and "min_layer_density" in str(err.value)
    speed_budget(lat, ["f0", "f1", "h0"], [1, 1, 1], 8, target=best - 0.05)  # just inside: accepted


def test_width_grid_and_spread():
    assert width_grid(3072, 8) == [384, 768, 1536, 2304, 3072]
    assert width_grid(12) == [2, 3, 6, 9, 12]
    assert width_grid(5, 8) == [1, 2, 4, 5]
    assert spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread([1.0] * 8 + [3.0, 3.0]) == pytest.approx(2.0)  # (p90 - p10) / median


def test_a_noisy_measurement_warns_with_its_spread():
    with pytest.warns(UserWarning, match="spread by 40% between repeats"):
        assert warn_if_noisy("the dense forward", 0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_noisy("the dense forward", 0.05)


def test_block_times_that_ignore_the_width_warn():
    from smart_hf.latency.timing import warn_if_width_blind

    # 2 threads on a busy 2-core machine: a DeiT-tiny FFN block at 40 ms for 96 and for 768 neurons
    with pytest.warns(UserWarning, match="hardly depends on its width"):
        assert warn_if_width_blind("ffn", [96, 192, 384, 576, 768], [0.0399, 0.0401, 0.0400, 0.0402, 0.0400])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_width_blind("ffn", [96, 768], [0.79e-3, 5.33e-3])  # the quiet measurement: 6.7x
        assert not warn_if_width_blind("heads", [1, 3], [1.11e-3, 2.68e-3])  # 3x the heads, 2.4x the time
        assert not warn_if_width_blind("ffn", [8, 64], [50e-6, 60e-6])  # sub-millisecond: dispatch dominates


def test_a_rebuilt_block_has_the_slim_shapes():
    model = tiny_vit().eval()
    sets = find_coupled_sets(model)
    x = latency_inputs(model, 2, 8)
    assert x["pixel_values"].shape == (2, 3, 16, 16)  # vision: the token count follows the image size
    shapes = capture_input_shapes(model, sets, lambda: model(**x))
    assert shapes[sets[0].owner] == (2, 17, 32)
    with torch.inference_mode():
        for cset in sets:
            out = rebuild_block(model, cset, shapes[cset.owner], 1)()
            assert out.shape == (2, 17, 32)


def test_the_latency_model_is_cached_and_never_reused_for_another_shape_or_dtype(tmp_path):
    model = tiny_bert().eval()
    first = _measure(model)
    assert not first["cached"] and len(first["blocks"]) == 2  # one FFN and one attention block for both layers
    assert first["dense_seconds"] > 0 and set(first["owners"]) == {s.owner for s in find_coupled_sets(model)}
    assert _measure(model)["cached"]  # the second run reads the file
    assert not _measure(model, batch=3)["cached"]  # another shape: measured again
    assert not _measure(copy.deepcopy(model).double())["cached"]  # another dtype
    files = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(files) == 3
    path = next(f for f in files if json.loads(f.read_text())["key"]["shape"]["input_ids"] == [2, 8]
                and json.loads(f.read_text())["key"]["dtype"] == "torch.float32")
    payload = json.loads(path.read_text())
    payload["key"]["device"] = "cpu:another machine"  # same file name, another device inside: never trusted
    path.write_text(json.dumps(payload))
    assert not _measure(model)["cached"]


def _linear_latency(model, _config, owners):
    """A deterministic latency model for the wiring tests: time proportional to MACs (1 ns each), no intercepts,
    25% of the dense time fixed -- what a large shape on a quiet machine looks like."""
    sets = {s.owner: s for s in find_coupled_sets(model)}
    blocks = {o: {"kind": sets[o].kind, "units": sets[o].units, "a": 0.0, "b": 1e-9 * coupled_unit_cost(model, sets[o])}
              for o in owners}
    full = sum(b["b"] * b["units"] for b in blocks.values())
    return {"dense_seconds": full / 0.75, "fixed_seconds": full / 3, "blocks": blocks, "owners": {o: o for o in owners}}


def _bert_with_wide_ffn():
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=96, num_labels=3))


def test_prepare_with_a_target_spends_measured_time_and_rounds_ffn_widths(monkeypatch):
    monkeypatch.setattr("smart_hf.inject.measure_for_prepare", _linear_latency)
    model = _bert_with_wide_ffn().eval()
    lat = _linear_latency(model, None, [s.owner for s in find_coupled_sets(model)])
    cfg = sh.SmartConfig(pattern="coupled", target_speedup=1.6, score_noise=1.0)
    sh.prepare_model(model, cfg)
    state = sh.get_smart_state(model)
    speed = state.speed_target
    assert speed["target"] == 1.6 and speed["width_multiple"] == 8 and 0 < speed["sparsity"] < 1
    costs = [layer._smart_coupled.unit_cost for layer in state.layers]
    names = state.targeted_module_names
    assert costs == pytest.approx([lat["blocks"][n]["b"] * NS for n in names])  # nanoseconds, not MACs
    sh.harden(model)
    kept = {}
    for name, layer in zip(names, state.layers):
        kept[name] = int(layer.smart_mask.sum())
        if layer._smart_coupled.cset.kind == "ffn":
            assert kept[name] % 8 == 0 or kept[name] == layer.smart_mask.numel()
    achieved = lat["dense_seconds"] / predicted_seconds(lat, kept)
    largest_step = max(b["b"] * (8 if b["kind"] == "ffn" else 1) for b in lat["blocks"].values())
    assert abs(lat["dense_seconds"] / 1.6 - predicted_seconds(lat, kept)) <= largest_step  # one chunk off at most
    assert achieved == pytest.approx(1.6, rel=0.1)


def test_prepare_refuses_an_unreachable_target_and_leaves_the_model_unchanged(monkeypatch):
    monkeypatch.setattr("smart_hf.inject.measure_for_prepare", _linear_latency)
    model = _bert_with_wide_ffn().eval()
    before = [n for n, _ in model.named_parameters()]
    lat = _linear_latency(model, None, [s.owner for s in find_coupled_sets(model)])
    floor = {o: 8 if b["kind"] == "ffn" else 1 for o, b in lat["blocks"].items()}  # 8 of 96 neurons, 1 of 4 heads
    best = lat["dense_seconds"] / predicted_seconds(lat, floor)
    cfg = sh.SmartConfig(pattern="coupled", target_speedup=3.5, latency_batch_size=2, latency_seq_len=8)
    with pytest.raises(ValueError, match=f"out of reach.*run {best:.2f}x faster"):
        sh.prepare_model(model, cfg)
    assert not sh.is_prepared(model) and [n for n, _ in model.named_parameters()] == before


def test_a_real_measurement_prepares_a_target_end_to_end():
    model = tiny_bert().eval()
    cfg = sh.SmartConfig(pattern="coupled", target_speedup=1.01, latency_batch_size=2, latency_seq_len=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sh.prepare_model(model, cfg)
        except ValueError as err:  # a tiny model at a tiny shape is mostly fixed overhead: refused, never wrong
            assert "out of reach" in str(err)
            return
    speed = sh.get_smart_state(model).speed_target
    assert speed["target"] == 1.01 and speed["latency_scale"] > 0  # the whole-model scale is recorded


def test_measure_speedup_records_target_and_achieved():
    dense = tiny_bert().eval()
    model = sh.prepare_model(copy.deepcopy(dense), sh.SmartConfig(pattern="coupled", sparsity=0.5, score_noise=1.0))
    sh.harden(model)
    sh.slim(model, mode="per_layer")
    record = measure_speedup(dense, model, (2, 8), repeats=3, target=2.0)
    assert record["target"] == 2.0 and record["dense_ms"] > 0 and record["slim_ms"] > 0
    assert record["speedup"] == pytest.approx(record["dense_ms"] / record["slim_ms"])
    assert {"spread", "load", "threads", "device"} <= set(record)
    assert dense.training is False and model.training is False
    with pytest.raises(ValueError, match="positive ints"):
        measure_speedup(dense, model, (0, 8))


def test_fit_is_least_squares_with_a_non_negative_intercept():
    from smart_hf.latency.model import _fit

    assert _fit([1, 2, 4], [3.0, 5.0, 9.0], 4) == pytest.approx((1.0, 2.0))  # exact line t = 1 + 2 w
    a, b = _fit([1, 2, 4], [0.0, 2.0, 6.0], 4)  # the line t = -2 + 2 w would have a negative intercept
    assert a == 0.0 and b == pytest.approx((0 * 1 + 2 * 2 + 6 * 4) / (1 + 4 + 16))  # refit through the origin
    assert _fit([1, 2, 4], [5.0, 4.0, 3.0], 4) == (0.0, 3.0 / 4)  # falling with width (noise): proportional


def test_round_robin_timing_calls_every_function_each_round():
    from smart_hf.latency.timing import time_round_robin

    calls = []
    times = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                             repeats=4, warmup=1)
    assert calls == ["a", "b"] * 5 and [len(t) for t in times.values()] == [4, 4]


def test_round_robin_timing_enters_contexts_outside_the_timed_call_and_adds_rounds_for_min_seconds():
    import time

    from smart_hf.latency.timing import time_round_robin

    swap = _SlowSwap()
    times = time_round_robin({"a": lambda: None}, torch.device("cpu"), repeats=3, warmup=1, contexts={"a": swap})
    assert swap.entered == swap.left == 4  # the warm-up round and 3 timed ones
    assert len(times["a"]) == 3 and max(times["a"]) < 0.01  # the 20 ms swaps are not in the call's time
    times = time_round_robin({"a": lambda: time.sleep(0.002)}, torch.device("cpu"), repeats=3, warmup=0,
                             min_seconds=0.05)
    assert 3 < len(times["a"]) <= 24  # rounds beyond `repeats` until 50 ms are spent, at most 8x repeats


def test_round_robin_timing_counts_samples_already_taken_as_the_first_rounds():
    from smart_hf.latency.timing import time_round_robin

    calls = []
    times = time_round_robin({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, torch.device("cpu"),
                             repeats=3, warmup=0, taken={"a": [5.0]})
    assert calls == ["b", "a", "b", "a", "b"]  # "a" sits out the first round only
    assert times["a"][0] == 5.0 and [len(t) for t in times.values()] == [3, 3]


def test_a_long_capture_forward_is_the_dense_forwards_first_sample_and_skips_the_warm_up(monkeypatch):
    import smart_hf.latency.model as latency_model

    model = tiny_bert().eval()
    forward, calls = model.forward, []

    def counting_forward(*args, **kwargs):  # the dense and the narrowed whole-model forwards both run it
        calls.append(1)
        return forward(*args, **kwargs)

    model.forward = counting_forward
    monkeypatch.setattr(latency_model, "MIN_SECONDS", 0.0)
    counts = {}
    for skip_seconds in (float("inf"), 0.0):  # a short forward, then one that counts as long
        monkeypatch.setattr(latency_model, "WARMUP_SKIP_SECONDS", skip_seconds)
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measure_latency_model(model, find_coupled_sets(model), 2, 8, use_cache=False, max_seconds=0.0)
        counts[skip_seconds > 0] = len(calls)
    # exactly 3 rounds of a dense and a narrowed forward after the capture; a short one adds a narrowed warm-up
    assert counts == {True: 1 + 1 + 3 * 2, False: 1 + 3 * 2 - 1}


class _SlowSwap:
    """A reusable context manager far slower than the call it surrounds (as `Narrowing`'s module swaps are)."""

    def __init__(self):
        self.entered = self.left = 0

    def __enter__(self):
        import time

        time.sleep(0.01)
        self.entered += 1

    def __exit__(self, *exc):
        import time

        time.sleep(0.01)
        self.left += 1


@pytest.mark.parametrize(
    "build, kinds",
    [(tiny_resnet, {"conv"}), (tiny_gpt2, {"heads", "ffn"}), (tiny_llama, {"heads", "ffn"})],
)
def test_every_family_the_finder_accepts_gets_a_latency_model(build, kinds):
    model = build().eval()
    lat = _measure(model)
    assert {b["kind"] for b in lat["blocks"].values()} == kinds  # fused GPT-2 c_attn, GQA, conv -> BN -> conv
    assert all(b["b"] > 0 and b["a"] >= 0 for b in lat["blocks"].values())
    assert predicted_seconds(lat, {}) == pytest.approx(lat["dense_seconds"])


def test_whole_model_scale_is_fitted_through_the_dense_time():
    from smart_hf.latency.calibrate import fit_scale

    # T = F + c S through (S_full, T_dense) = (8, 10) and (2, 3): c = (10 - 3) / (8 - 2), F = 10 - 8 c
    fit = fit_scale(10.0, 8.0, [(2.0, 3.0)])
    assert fit["scale"] == pytest.approx(7 / 6) and fit["fixed_seconds"] == pytest.approx(10 - 8 * 7 / 6)
    assert fit["fallback"] is None
    assert sum(fit["knots"], []) == pytest.approx([2 * 7 / 6, 3.0, 8 * 7 / 6, 10.0])  # through both measured times
    # two narrowed points: least squares of dT = c dS, dS = (6, 4), dT = (7, 4.5)
    fit = fit_scale(10.0, 8.0, [(2.0, 3.0), (4.0, 5.5)])
    c = (6 * 7 + 4 * 4.5) / (36 + 16)
    assert fit["scale"] == pytest.approx(c) and fit["fixed_seconds"] == pytest.approx(10 - 8 * c)
    assert sum(fit["knots"], []) == pytest.approx([2 * c, 3.0, 4 * c, 5.5, 8 * c, 10.0])  # knots [U, T], ascending
    # a narrowed time out of order (noise: the wider model measured faster) is left out of the knots
    assert len(fit_scale(10.0, 8.0, [(2.0, 3.0), (4.0, 2.9)])["knots"]) == 2


def test_the_prediction_runs_through_every_measured_whole_model_time():
    from smart_hf.latency.calibrate import fit_scale

    # c = (10 - 1) / (8 - 2) = 1.5, F = 10 - 12 = -2: the whole model gains more from narrowing than its blocks
    fit = fit_scale(10.0, 8.0, [(2.0, 1.0)])
    assert fit["scale"] == pytest.approx(1.5) and fit["fixed_seconds"] == pytest.approx(-2.0)
    lat = {"fixed_seconds": fit["fixed_seconds"], "knots": fit["knots"]}
    assert whole_seconds(lat, 1.5 * 8.0) == pytest.approx(10.0)  # full width: the dense time
    assert whole_seconds(lat, 1.5 * 2.0) == pytest.approx(1.0)  # the narrowed whole model, as measured
    assert whole_seconds(lat, 1.5) == pytest.approx(0.5)  # below it in proportion, never negative
    # no narrowed time below the dense one: the blocks' own fits, no knots
    fit = fit_scale(10.0, 8.0, [(2.0, 0.0)])
    assert fit["knots"] is None and fit["scale"] == 1.0 and fit["fallback"]


def test_whole_time_runs_through_the_knots_and_is_inverted_exactly():
    lat = {"fixed_seconds": -2e-3, "knots": [[3e-3, 1e-3], [5e-3, 2.5e-3], [9e-3, 7e-3]]}
    assert whole_seconds(lat, 4e-3) == pytest.approx(1.75e-3)  # between the two lower knots
    assert whole_seconds(lat, 7e-3) == pytest.approx(4.75e-3)  # between the two upper ones
    assert whole_seconds(lat, 9e-3) == pytest.approx(7e-3) and whole_seconds(lat, 5e-3) == pytest.approx(2.5e-3)
    assert whole_seconds(lat, 1.5e-3) == pytest.approx(0.5e-3)  # the lowest line would cross 0: in proportion
    above_zero = {"fixed_seconds": 0.0, "knots": [[3e-3, 2e-3], [9e-3, 5e-3]]}
    assert whole_seconds(above_zero, 1e-3) == pytest.approx(1e-3)  # the lowest line continues (time left at 0)
    for model in (lat, above_zero):
        for u in (0.3e-3, 1.5e-3, 3e-3, 4e-3, 5e-3, 7e-3, 9e-3):
            assert block_seconds_for(model, whole_seconds(model, u)) == pytest.approx(u)
    plain = {"fixed_seconds": 2e-3}  # no knots (the blocks' own fits): T = F + U everywhere
    assert whole_seconds(plain, 1e-3) == pytest.approx(3e-3) and block_seconds_for(plain, 3e-3) == pytest.approx(1e-3)


@pytest.mark.parametrize("target", [1.5, 3.0, 6.0])  # between the upper knots, the lower ones, below them
def test_the_budget_meets_the_target_through_the_knots(target):
    # two FFN blocks of 10 units at 0.1 ms/unit, one head block of 4 at 1 ms/unit: U_full = 6 ms, a dense time of
    # 5 ms, and measured whole-model times of 1 ms at U = 2 ms and 2.5 ms at U = 4 ms
    lat = _fake_latency()
    for block in lat["blocks"].values():
        block["a"] = 0.0
    lat.update(fixed_seconds=-1e-3, knots=[[2e-3, 1e-3], [4e-3, 2.5e-3], [6e-3, 5e-3]], dense_seconds=5e-3)
    assert predicted_seconds(lat, {}) == pytest.approx(5e-3)
    budget = speed_budget(lat, ["f0", "f1", "h0"], [1, 1, 1], 1, target=target)
    k = (1 - budget["sparsity"]) * 6e-3  # the block time the kept units may spend
    assert lat["dense_seconds"] / whole_seconds(lat, k) == pytest.approx(target)


@pytest.mark.parametrize("points", [[(8.0, 9.0)], [(2.0, 9.99)], [(2.0, 11.0)]])
def test_a_nonsense_whole_model_fit_keeps_the_blocks_own_fits(points):
    from smart_hf.latency.calibrate import fit_scale

    # no width difference; a narrowed model barely faster (c ~ 0.002); a narrowed model slower than the dense one
    fit = fit_scale(10.0, 8.0, points)
    assert fit["scale"] == 1.0 and fit["fixed_seconds"] == pytest.approx(2.0) and fit["fallback"]


def test_narrowing_swaps_narrow_modules_in_and_restores_the_model():
    from smart_hf.latency.calibrate import Narrowing, narrow_width

    model = tiny_bert().eval()
    sets = find_coupled_sets(model)
    before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    kept = {s.owner: narrow_width(s, 0.25, 8) for s in sets}
    ffn = next(s for s in sets if s.kind == "ffn")
    heads = next(s for s in sets if s.kind == "heads")
    seen = {}
    model.bert.encoder.layer[0].register_forward_pre_hook(
        lambda m, _a: seen.update(ffn=m.intermediate.dense.out_features, heads=m.attention.self.all_head_size)
    )
    x = latency_inputs(model, 2, 8)
    narrowing = Narrowing(model, sets, kept)
    with torch.inference_mode():
        for _ in range(2):  # reusable: the round-robin timing enters it every round
            with narrowing as narrowed:
                out = narrowed(**x)
        with pytest.raises(RuntimeError), narrowing:
            raise RuntimeError("a failing forward")
    assert kept[ffn.owner] == 16 and kept[heads.owner] == 1  # a quarter of 64 neurons; of 2 heads, one
    assert narrow_width(CoupledSet("ffn", "o", (), 20), 0.25, 8) == 8  # 5 rounded to the width multiple
    assert narrow_width(CoupledSet("ffn", "o", (), 4), 0.25, 8) == 1  # fewer units than the multiple: as is
    assert narrow_width(CoupledSet("heads", "o", (), 12), 0.25, 8) == 3  # heads: whole heads, no multiple
    assert seen == {"ffn": kept[ffn.owner], "heads": kept[heads.owner] * heads.head_dim}
    assert out.logits.shape == (2, model.config.num_labels)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == before  # swapped back
    assert model.bert.encoder.layer[0].attention.self.all_head_size == model.config.hidden_size
    resnet = tiny_resnet().eval()  # chained convs: one conv narrowed on both axes
    rsets = find_coupled_sets(resnet)
    with torch.inference_mode(), Narrowing(resnet, rsets, {s.owner: 1 for s in rsets}) as narrowed:
        narrowed(**latency_inputs(resnet, 1, 8))


def test_the_cache_key_names_the_calibrated_schema():
    from smart_hf.latency.model import SCHEMA, latency_key

    model = tiny_bert().eval()
    # 1: uncalibrated block fits; 2: narrowed times with the module swaps; 3: F >= 0 forced: never read again
    assert SCHEMA == 4
    assert latency_key(model, latency_inputs(model, 2, 8))["schema"] == 4
    lat = _measure(model)
    record = lat["calibration"]
    assert record["shares"] == [0.25] and len(record["whole_seconds"]) == 1 and record["scale"] > 0
    assert predicted_seconds(lat, {}) == pytest.approx(lat["dense_seconds"])  # full width: the dense time
