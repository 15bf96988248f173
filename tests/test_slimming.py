"""`slim`: pruned FFN channels removed physically; outputs unchanged, parameters fall as predicted, loadable."""

import pytest
import torch
from tiny_models import text_inputs, tiny_bert, tiny_vit, vit_inputs
from torch import nn
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

import smart_hf as sh
from smart_hf.export import save_pruned
from smart_hf.slimming import find_ffn_pairs, load_slim, slim

ARCHS = {
    "vit": (tiny_vit, vit_inputs, AutoModelForImageClassification, "mlp.fc1", "mlp.fc2"),
    "bert": (tiny_bert, text_inputs, AutoModelForSequenceClassification, "intermediate.dense", "output.dense"),
}


def _channel_pruned(factory, budget="global"):
    model = factory().eval()
    with torch.no_grad():  # non-zero biases: the pruned channels still emit act(b), which slim must fold into fc2
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.normal_()
    sh.prepare_model(model, sh.SmartConfig(pattern="channel", sparsity=0.5, budget=budget))
    sh.harden(model)
    return model


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def _predicted_removed(model, pairs):
    modules = dict(model.named_modules())
    removed = 0
    for pair in pairs:
        fc1, fc2 = modules[pair["fc1"]], modules[pair["fc2"]]
        kept = int(((fc1.weight != 0).any(1) & (fc2.weight != 0).any(0)).sum())
        removed += (fc1.out_features - kept) * (fc1.in_features + 1 + fc2.out_features)
    return removed, kept


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ffn_pairs_are_found_by_structure(arch):
    factory, _, _, fc1, fc2 = ARCHS[arch]
    pairs = find_ffn_pairs(factory())
    assert len(pairs) == 2
    assert all(p["fc1"].endswith(fc1) and p["fc2"].endswith(fc2) for p in pairs)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_uniform_slim_is_exact_smaller_and_stock_loadable(arch, tmp_path):
    factory, make_inputs, auto, *_ = ARCHS[arch]
    model = _channel_pruned(factory, budget="layer")  # same kept count per layer: no padding needed
    inputs = make_inputs()
    masked = _logits(model, inputs)
    sh.squash(model)
    pairs = find_ffn_pairs(model)
    predicted, kept = _predicted_removed(model, pairs)
    before = sum(p.numel() for p in model.parameters())
    summary = slim(model)
    after = sum(p.numel() for p in model.parameters())
    assert before - after == predicted == summary["params_removed"] and predicted > 0
    assert model.config.intermediate_size == kept
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    left = {e["name"] for e in summary["left_masked"]}
    assert any("fc2" in n or "output.dense" in n for n in left)  # output projections stay masked
    assert any("q" in n.rsplit(".", 1)[-1] for n in left)  # attention needs head alignment
    save_pruned(model, tmp_path, save_plots=False)
    loaded = auto.from_pretrained(tmp_path).eval()  # stock transformers, no smart_hf
    assert sum(p.numel() for p in loaded.parameters()) == after
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    assert sh.sparsity_report(loaded)["valid"]
    assert "uniform slimming" in (tmp_path / "README.md").read_text()


def test_uniform_slim_pads_layers_that_kept_fewer_channels():
    model = _channel_pruned(tiny_vit)  # global budget: layers keep different counts
    inputs = vit_inputs()
    masked = _logits(model, inputs)
    fc1s = [p["fc1"] for p in find_ffn_pairs(tiny_vit())]
    alive = [int((model.get_submodule(name).weight != 0).any(1).sum()) for name in fc1s]
    assert len(set(alive)) > 1
    summary = slim(model)  # a prepared model is squashed first
    assert {p["after"] for p in summary["pairs"]} == {max(alive)}
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_per_layer_slim_loads_with_load_slim(arch, tmp_path):
    factory, make_inputs, auto, *_ = ARCHS[arch]
    torch.manual_seed(3)
    model = _channel_pruned(factory)
    inputs = make_inputs()
    masked = _logits(model, inputs)
    summary = slim(model, mode="per_layer")
    sizes = [p["after"] for p in summary["pairs"]]
    assert [model.get_submodule(p["fc1"]).out_features for p in summary["pairs"]] == sizes
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    save_pruned(model, tmp_path, save_plots=False)
    loaded = load_slim(tmp_path)
    assert type(loaded) is type(model)
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    assert "load_slim" in (tmp_path / "README.md").read_text()
    if len(set(sizes)) > 1:
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):  # stock loading refuses, loudly
            auto.from_pretrained(tmp_path)


def test_slim_of_a_reloaded_squashed_model(tmp_path):
    model = _channel_pruned(tiny_vit, budget="layer")
    inputs = vit_inputs()
    masked = _logits(model, inputs)
    save_pruned(model, tmp_path / "pruned", save_plots=False)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "pruned").eval()
    slim(loaded)
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="already slim"):
        slim(loaded)


def test_slim_errors_name_the_fix():
    with pytest.raises(ValueError, match="pattern='channel'"):
        slim(tiny_vit())
    block = tiny_vit()
    sh.prepare_model(block, sh.SmartConfig(pattern="block", block_shape=[4, 4]))
    with pytest.raises(ValueError, match="nothing to slim"):
        slim(block)
    with pytest.raises(ValueError, match="mode"):
        slim(_channel_pruned(tiny_vit), mode="tight")
