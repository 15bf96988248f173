"""Finding the layers to prune (PEFT-style matching, default exclusions) and attaching SMART (`prepare_model`)."""

import logging

import pytest
import torch
from tiny_models import tiny_bert, tiny_gpt2, tiny_resnet, tiny_vit, vit_inputs
from transformers.pytorch_utils import Conv1D

from smart_hf import SmartConfig, find_targets, get_smart_state, prepare_model
from smart_hf.layers import SmartConv1D, SmartConv2d, SmartLinear, is_smart_layer


def _names(model, config):
    return [name for name, *_ in find_targets(model, config)]


# --- default targets ---


def test_default_targets_vit_exclude_patch_embedding_and_classifier():
    names = _names(tiny_vit(), SmartConfig())
    assert len(names) == 12
    assert all(n.startswith("vit.layers.") for n in names)
    assert "vit.embeddings.patch_embeddings.projection" not in names
    assert "classifier" not in names


def test_default_targets_bert_gpt2_resnet():
    bert = _names(tiny_bert(), SmartConfig())
    assert not any("embeddings" in n or n == "classifier" for n in bert)
    assert "bert.encoder.layer.0.attention.self.query" in bert and len(bert) == 13  # 12 + pooler.dense

    gpt2_model = tiny_gpt2()
    targets = find_targets(gpt2_model, SmartConfig(pattern="channel"))
    assert {name for name, *_ in targets} == {
        f"transformer.h.{i}.{sub}"
        for i in range(2)
        for sub in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    }  # no lm_head (tied to wte), no embeddings
    assert all(layout.kind == "conv1d" for _, _, layout, _ in targets)

    resnet = find_targets(tiny_resnet(), SmartConfig(pattern="channel"))
    names = [n for n, *_ in resnet]
    assert "resnet.embedder.embedder.convolution" not in names and "classifier.1" not in names
    assert len(names) == 7 and all(layout.kind == "conv2d" for _, _, layout, _ in resnet)


# --- PEFT-style matching ---


def test_target_modules_exact_and_suffix():
    model = tiny_vit()
    assert _names(model, SmartConfig(target_modules=["q_proj"])) == [
        "vit.layers.0.attention.q_proj",
        "vit.layers.1.attention.q_proj",
    ]
    assert _names(model, SmartConfig(target_modules=["vit.layers.1.mlp.fc1"])) == ["vit.layers.1.mlp.fc1"]
    assert _names(model, SmartConfig(target_modules=["mlp.fc2", "attention.v_proj"])) == [
        "vit.layers.0.attention.v_proj",
        "vit.layers.0.mlp.fc2",
        "vit.layers.1.attention.v_proj",
        "vit.layers.1.mlp.fc2",
    ]
    # a suffix must be whole name parts: "proj" is not a suffix of "q_proj"
    with pytest.raises(ValueError, match="no module matched"):
        _names(model, SmartConfig(target_modules=["proj"]))
    # explicit targets may include what the defaults exclude
    assert _names(model, SmartConfig(target_modules=["classifier"], pattern="channel")) == ["classifier"]


def test_target_regex_and_exclude():
    model = tiny_vit()
    assert _names(model, SmartConfig(target_regex=r"vit\.layers\.0\.attention\.[qk]_proj")) == [
        "vit.layers.0.attention.q_proj",
        "vit.layers.0.attention.k_proj",
    ]
    # fullmatch, not search
    with pytest.raises(ValueError, match="no module matched"):
        _names(model, SmartConfig(target_regex="q_proj"))
    names = _names(model, SmartConfig(exclude_modules=["fc1", "vit.layers.0.attention.o_proj"]))
    assert len(names) == 9 and not any(n.endswith("fc1") for n in names)
    assert "vit.layers.0.attention.o_proj" not in names and "vit.layers.1.attention.o_proj" in names
    # exclude wins over explicit targets
    assert _names(
        model, SmartConfig(target_modules=["q_proj"], exclude_modules=["vit.layers.0.attention.q_proj"])
    ) == ["vit.layers.1.attention.q_proj"]


def test_nothing_matched_raises():
    with pytest.raises(ValueError, match="print\\(\\[n for n, _ in model.named_modules\\(\\)\\]\\)"):
        find_targets(tiny_vit(), SmartConfig(target_modules=["does_not_exist"]))


def test_explicit_unsupported_module_raises():
    with pytest.raises(ValueError, match="cannot be pruned"):
        find_targets(tiny_bert(), SmartConfig(target_modules=["word_embeddings"]))


def test_non_divisible_layer_skipped_with_warning_or_raises_when_named(caplog):
    model = tiny_vit(intermediate_size=60)  # fc1 (60, 32), fc2 (32, 60): not divisible by 8x8 blocks
    with caplog.at_level(logging.WARNING, logger="smart_hf.inject"):
        names = _names(model, SmartConfig(block_shape=[8, 8]))
    assert len(names) == 8 and not any("mlp" in n for n in names)
    for name in ["vit.layers.0.mlp.fc1", "vit.layers.0.mlp.fc2", "vit.layers.1.mlp.fc1", "vit.layers.1.mlp.fc2"]:
        assert f"skipping {name}" in caplog.text
    with pytest.raises(ValueError, match=r"cannot prune 'vit.layers.0.mlp.fc1'.*block_shape=\(8, 8\)"):
        find_targets(model, SmartConfig(block_shape=[8, 8], target_modules=["fc1"]))
    with pytest.raises(ValueError, match="not divisible by m=8"):
        find_targets(model, SmartConfig(pattern="nm", n=2, m=8, target_regex=r".*fc2"))


# --- overrides ---


def test_overrides_apply_a_different_pattern():
    model = tiny_vit()
    cfg = SmartConfig(
        sparsity=0.6,
        overrides=[
            {"regex": r".*\.mlp\.fc1", "pattern": "nm", "n": 1, "m": 4},
            {"regex": r".*attention\.q_proj", "pattern": "channel", "sparsity": 0.25},
        ],
    )
    by_name = {name: (layout, sparsity) for name, _, layout, sparsity in find_targets(model, cfg)}
    layout, sparsity = by_name["vit.layers.0.mlp.fc1"]
    assert (layout.pattern, layout.n, layout.m, sparsity) == ("nm", 1, 4, 0.75)
    layout, sparsity = by_name["vit.layers.1.attention.q_proj"]
    assert (layout.pattern, sparsity) == ("channel", 0.25)
    layout, sparsity = by_name["vit.layers.0.mlp.fc2"]
    assert (layout.pattern, layout.block_shape, sparsity) == ("block", (4, 4), 0.6)


def test_overlapping_overrides_raise():
    cfg = SmartConfig(overrides=[{"regex": r".*fc1", "pattern": "nm"}, {"regex": r".*mlp\..*", "sparsity": 0.3}])
    with pytest.raises(ValueError, match="matches several overrides"):
        find_targets(tiny_vit(), cfg)


def test_unused_override_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="smart_hf.inject"):
        find_targets(tiny_vit(), SmartConfig(overrides=[{"regex": r".*nothing.*", "pattern": "nm"}]))
    assert "matched no targeted module" in caplog.text


# --- prepare_model ---


def test_prepare_swaps_classes_and_keeps_keys():
    model = tiny_vit()
    keys_before = set(model.state_dict())
    prepare_model(model, SmartConfig())
    fc1 = model.vit.layers[0].mlp.fc1
    assert type(fc1) is SmartLinear and isinstance(fc1, torch.nn.Linear) and is_smart_layer(fc1)
    assert fc1.smart_scores.shape == (16, 8) and fc1.smart_mask.shape == (16, 8)
    assert fc1.smart_scores.requires_grad
    keys_after = set(model.state_dict())
    assert keys_before <= keys_after
    assert all(k.split(".")[-1].startswith("smart_") or ".smart_state." in f".{k}" for k in keys_after - keys_before)
    assert "smart=block=(4, 4)" in repr(fc1)

    gpt2_model = prepare_model(tiny_gpt2(), SmartConfig(pattern="nm"))
    c_fc = gpt2_model.transformer.h[0].mlp.c_fc
    assert type(c_fc) is SmartConv1D and isinstance(c_fc, Conv1D)
    assert c_fc.smart_scores.shape == (128 * 32 // 4, 4)

    resnet = prepare_model(tiny_resnet(), SmartConfig(pattern="channel"))
    assert type(resnet.resnet.encoder.stages[0].layers[0].layer[1].convolution) is SmartConv2d


def test_already_prepared_raises():
    model = prepare_model(tiny_vit(), SmartConfig())
    with pytest.raises(ValueError, match="already prepared"):
        prepare_model(model, SmartConfig())


def test_nan_weights_raise():
    model = tiny_vit()
    with torch.no_grad():
        model.vit.layers[1].mlp.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="vit.layers.1.mlp.fc2"):
        prepare_model(model, SmartConfig())


def test_prepare_needs_a_smart_config_and_calibration_data():
    with pytest.raises(ValueError, match="needs a SmartConfig"):
        prepare_model(tiny_vit(), {"pattern": "nm"})
    with pytest.raises(ValueError, match="calibration_data"):
        prepare_model(tiny_vit(), SmartConfig(score_init="activation"))


def test_budget_groups():
    cfg = SmartConfig(
        sparsity=0.5, overrides=[{"regex": r".*fc1", "pattern": "nm"}, {"regex": r".*fc2", "sparsity": 0.7}]
    )
    state = get_smart_state(prepare_model(tiny_vit(), cfg))
    kinds = sorted((g.kind, len(g.layers)) for g in state.groups)
    assert kinds == [("global", 2), ("global", 8), ("nm", 1), ("nm", 1)]  # one shared top-k per sparsity
    layer_state = get_smart_state(prepare_model(tiny_vit(), SmartConfig(budget="layer")))
    assert [g.kind for g in layer_state.groups] == ["layer"] * 12


def test_guard_that_cannot_be_honoured_raises():
    with pytest.raises(ValueError, match="lower min_layer_density or sparsity"):
        prepare_model(tiny_vit(), SmartConfig(sparsity=0.95, min_layer_density=0.2))


def test_root_sequential_model_passes_through_the_state():
    """nn.Sequential calls every child, including the added ``smart_state``: it must be an identity."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    prepare_model(model, SmartConfig(block_shape=[2, 2]))
    out = model(torch.randn(3, 8))
    assert out.shape == (3, 4)


def test_prepared_model_runs_forward():
    model = prepare_model(tiny_vit(), SmartConfig())
    assert model(**vit_inputs()).logits.shape == (2, 3)
