"""`slim`: pruned FFN channels, attention heads and CNN chain channels removed physically; outputs unchanged,
parameters and MACs fall as predicted, loadable."""

import pytest
import torch
from tiny_models import resnet_inputs, text_inputs, tiny_bert, tiny_deit, tiny_resnet, tiny_vit, vit_inputs
from torch import nn
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

import benchmarks.inference as bench
import smart_hf as sh
from benchmarks.macs import attention_macs, conv_macs, transformer_layer_macs
from smart_hf.artifact.export import save_pruned
from smart_hf.slim import find_ffn_pairs, head_pruning_overrides, load_slim, slim, slimmed_widths
from smart_hf.slim.cnn import find_conv_chains, pruned_channel_outputs
from smart_hf.slim.heads import find_attention_blocks

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
    assert isinstance(loaded, type(model))  # the stock class, each layer resized (smart_hf.slim.portable)
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    assert "trust_remote_code=True" in (tmp_path / "README.md").read_text()
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # stock loading runs no shipped code unasked
        auto.from_pretrained(tmp_path, trust_remote_code=False)


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


# --- attention heads -------------------------------------------------------------------------------------------------


def padded_text_inputs(batch: int = 2):
    """BERT inputs whose second row is padded: the padding mask must not break the value-bias fold."""
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[1, 5:] = 0
    return {"input_ids": torch.randint(0, 100, (batch, 8)), "attention_mask": mask}


HEAD_ARCHS = {
    "vit": (tiny_vit, vit_inputs, AutoModelForImageClassification),
    "deit": (tiny_deit, vit_inputs, AutoModelForImageClassification),
    "bert": (tiny_bert, padded_text_inputs, AutoModelForSequenceClassification),
}


def _head_pruned(factory, ffn_pattern="channel"):
    """Random non-zero biases, channel-pruned FFNs (or ``ffn_pattern``) and half the heads of every layer pruned
    through value-projection head blocks; hardened."""
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.normal_()
    overrides = head_pruning_overrides(model, sparsity=0.5)
    cfg = sh.SmartConfig(pattern=ffn_pattern, block_shape=[4, 4], sparsity=0.5, budget="layer", overrides=overrides)
    sh.prepare_model(model, cfg)
    sh.harden(model)
    return model


def _dead_heads(model):
    """Per attention block (in module order): indices of heads whose value rows are all zero, read off the weights."""
    dead = []
    for block in find_attention_blocks(model):
        v = model.get_submodule(block["v"]).weight
        per_head = v.reshape(block["heads"], block["head_dim"], -1).abs().sum(dim=(1, 2))
        dead.append((per_head == 0).nonzero().flatten().tolist())
    return dead


def _predicted_head_params_removed(model, dead):
    removed = 0
    for block, gone in zip(find_attention_blocks(model), dead):
        v, o = model.get_submodule(block["v"]), model.get_submodule(block["o"])
        per_head = (
            3 * block["head_dim"] * (v.in_features + 1) + o.out_features * block["head_dim"]
        )  # q,k,v rows; o cols
        removed += len(gone) * per_head
    return removed


@pytest.mark.parametrize("arch", ["vit", "bert"])
def test_head_pruning_overrides_make_whole_heads_the_units(arch):
    model = _head_pruned(HEAD_ARCHS[arch][0])
    for block, gone in zip(find_attention_blocks(model), _dead_heads(model)):
        v = model.get_submodule(block["v"]).weight.reshape(block["heads"], block["head_dim"], -1)
        assert len(gone) == block["heads"] // 2  # layer budget: exactly half the heads of every layer
        alive = [h for h in range(block["heads"]) if h not in gone]
        assert bool((v[alive] != 0).any(dim=2).all())  # kept heads keep every value row: units are whole heads


@pytest.mark.parametrize(
    ("arch", "mode"), [("vit", "uniform"), ("deit", "uniform"), ("vit", "per_layer"), ("bert", "per_layer")]
)
def test_head_slim_is_exact_smaller_and_loadable(arch, mode, tmp_path):
    factory, make_inputs, auto = HEAD_ARCHS[arch]
    model = _head_pruned(factory)
    inputs = make_inputs()
    masked = _logits(model, inputs)
    sh.squash(model)
    dead = _dead_heads(model)
    predicted = _predicted_head_params_removed(model, dead) + _predicted_removed(model, find_ffn_pairs(model))[0]
    summary = slim(model, mode=mode)
    assert summary["params_removed"] == predicted > 0
    assert [h["after"] for h in summary["heads"]] == [h["before"] - len(g) for h, g in zip(summary["heads"], dead)]
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    save_pruned(model, tmp_path, save_plots=False)
    if mode == "uniform":  # num_attention_heads rewritten with head_dim pinned: stock transformers loads it
        loaded = auto.from_pretrained(tmp_path).eval()
        assert loaded.config.num_attention_heads == summary["heads"][0]["after"]
        assert loaded.config.head_dim == summary["heads"][0]["head_dim"]
    else:
        loaded = load_slim(tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == summary["params_after"]
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    assert sh.sparsity_report(loaded)["valid"]


def test_uniform_slim_leaves_bert_heads_masked_and_names_per_layer():
    model = _head_pruned(tiny_bert)
    inputs = padded_text_inputs()
    masked = _logits(model, inputs)
    summary = slim(model)  # FFNs are slimmed; BERT's head size is hidden/heads, so no head-count rewrite
    assert summary["heads"] == [] and summary["pairs"]
    reasons = {e["name"]: e["reason"] for e in summary["left_masked"]}
    assert all("per_layer" in reasons[b["v"]] for b in find_attention_blocks(model))
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    heads_only = _head_pruned(tiny_bert, ffn_pattern="block")  # nothing a config rewrite could describe
    with pytest.raises(ValueError, match="mode='per_layer'"):
        slim(heads_only)


def test_uniform_head_slim_pads_layers_that_lost_fewer_heads(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4
    )
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.bias.normal_()
    sh.prepare_model(model, sh.SmartConfig(pattern="channel", sparsity=0.25, budget="layer"))
    sh.squash(model)
    with torch.no_grad():  # heads {0, 1} of layer 0 and head {2} of layer 1 lose every value row
        for layer, heads in ((0, (0, 1)), (1, (2,))):
            for head in heads:
                model.vit.layers[layer].attention.v_proj.weight[head * 8 : (head + 1) * 8] = 0
    inputs = vit_inputs()
    masked = _logits(model, inputs)
    summary = slim(model)
    assert [h["after"] for h in summary["heads"]] == [3, 3]  # layer 0 keeps one removable head: exact padding
    assert (model.config.num_attention_heads, model.config.head_dim) == (3, 8)
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    save_pruned(model, tmp_path, save_plots=False)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)


def test_head_slim_with_a_partly_pruned_head_keeps_it():
    model = _head_pruned(tiny_vit)
    sh.squash(model)
    block = find_attention_blocks(model)[0]
    q = model.get_submodule(block["q"])
    with torch.no_grad():  # prune all q rows of a live head: that head still mixes tokens, it must stay
        alive = [h for h in range(block["heads"]) if h not in _dead_heads(model)[0]][0]
        q.weight[alive * block["head_dim"] : (alive + 1) * block["head_dim"]] = 0
    summary = slim(model, mode="per_layer")
    assert summary["heads"][0]["after"] == block["heads"] - 1
    assert any(e["name"] == block["q"] for e in summary["left_masked"])


def _linear_macs_by_layer(model, inputs):
    """MACs counted from the actual module shapes during a forward, per encoder layer: linears (rows * in * out)
    and the attention matmuls (2 * batch * tokens^2 * value width)."""
    counts = {}
    blocks = {b["attention"]: b for b in find_attention_blocks(model)}

    def layer_of(name):
        return int(name.split("layers.")[1].split(".")[0])

    def linear_hook(name):
        def hook(module, args, _out):
            counts[layer_of(name)] = counts.get(layer_of(name), 0) + args[0].numel() * module.out_features

        return hook

    def attention_hook(name):
        def hook(module, args, _out):
            batch, tokens, _ = args[0].shape
            width = model.get_submodule(blocks[name]["v"]).out_features
            counts[layer_of(name)] = counts.get(layer_of(name), 0) + 2 * batch * tokens * tokens * width

        return hook

    handles = []
    for name, module in model.named_modules():
        if ".layers." in name and isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook(name)))
        elif name in blocks:
            handles.append(module.register_forward_hook(attention_hook(name)))
    _logits(model, inputs)
    for handle in handles:
        handle.remove()
    return [counts[i] for i in sorted(counts)]


def test_macs_prediction_matches_the_module_shapes_dense_and_slim():
    model = _head_pruned(tiny_vit)
    inputs = vit_inputs(batch=2)
    cfg = model.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    sh.squash(model)
    heads_kept = [cfg.num_attention_heads - len(g) for g in _dead_heads(model)]
    ffn_kept = [int((model.get_submodule(p["fc1"]).weight != 0).any(1).sum()) for p in find_ffn_pairs(model)]
    dense = [
        transformer_layer_macs(tokens, cfg.hidden_size, cfg.num_attention_heads, head_dim, cfg.intermediate_size, 2)
        for _ in range(cfg.num_hidden_layers)
    ]
    assert [d["total"] for d in dense] == _linear_macs_by_layer(model, inputs)
    slim(model, mode="per_layer")
    predicted = [
        transformer_layer_macs(tokens, cfg.hidden_size, h, head_dim, f, 2)["total"]
        for h, f in zip(heads_kept, ffn_kept)
    ]
    assert predicted == _linear_macs_by_layer(model, inputs)
    assert all(p < d["total"] for p, d in zip(predicted, dense))


# --- CNN conv -> BN -> conv chains -----------------------------------------------------------------------------------


def _pruned_resnet():
    """Channel-pruned tiny ResNet whose BNs have random statistics, so pruned channels emit constants of both signs
    (ReLU(negative) == 0 is removable everywhere; a positive one only before an unpadded 1x1 conv)."""
    torch.manual_seed(0)
    model = tiny_resnet().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    sh.prepare_model(model, sh.SmartConfig(pattern="channel", sparsity=0.5))
    sh.harden(model)
    return model


def _bottleneck_chains(model):
    prefixes = [n for n, m in model.named_modules() if type(m).__name__ == "ResNetBottleNeckLayer"]
    return [(f"{p}.layer.{i}", f"{p}.layer.{i + 1}") for p in prefixes for i in (0, 1)]


def _predicted_conv_slim(model):
    """From the masks and a zero-input forward of each producer (which yields act(BN(0)) per channel): channels
    removed per chain, channels kept masked, and the predicted ``{(conv name, "in"|"out"): channels}``."""
    removed, kept_masked, widths = [], [], {}
    for producer_name, consumer_name in _bottleneck_chains(model):
        producer, consumer = model.get_submodule(producer_name), model.get_submodule(consumer_name)
        dead = (producer.convolution.weight.flatten(1) == 0).all(1)
        with torch.no_grad():
            constant = producer(torch.zeros(1, producer.convolution.in_channels, 5, 5))[0, :, 2, 2]
        unpadded = consumer.convolution.padding == (0, 0)
        gone = dead & ((constant == 0) | unpadded)
        removed.append(int(gone.sum()))
        kept_masked.append(int((dead & ~gone).sum()))
        kept = producer.convolution.out_channels - int(gone.sum())
        widths[f"{producer_name}.convolution", "out"] = widths[f"{consumer_name}.convolution", "in"] = kept
    return removed, kept_masked, widths


def _predicted_conv_params_removed(model, widths):
    """Conv weights ``out * in * kh * kw`` at the predicted widths, plus BN weight and bias per removed channel."""
    removed = 0
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            c_in, c_out = widths.get((name, "in"), conv.in_channels), widths.get((name, "out"), conv.out_channels)
            removed += (conv.in_channels * conv.out_channels - c_in * c_out) * conv.weight[0, 0].numel()
            removed += 2 * (conv.out_channels - c_out)  # the producer's BatchNorm affine parameters
    return removed


def test_basic_block_resnet_removes_only_zero_constant_channels(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(1)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    model = ResNetForImageClassification(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.bias.normal_()
    sh.prepare_model(model, sh.SmartConfig(pattern="channel", sparsity=0.5, budget="layer"))
    sh.harden(model)
    inputs = resnet_inputs()
    masked = _logits(model, inputs)
    summary = slim(model, mode="per_layer")
    assert len(summary["convs"]) == 2  # one 3x3 -> 3x3 chain per basic block: zero padding, no fold possible
    assert all(c["folded"] == 0 for c in summary["convs"])
    assert sum(c["before"] - c["after"] for c in summary["convs"]) > 0
    assert sum(c["kept_masked"] for c in summary["convs"]) > 0
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    save_pruned(model, tmp_path, save_plots=False)
    torch.testing.assert_close(_logits(load_slim(tmp_path), inputs), masked, atol=1e-4, rtol=0)


def test_conv_chains_are_found_by_structure():
    model = tiny_resnet()
    found = [(c["conv"], c["consumer"]) for c in find_conv_chains(model)]
    expected = [(f"{a}.convolution", f"{b}.convolution") for a, b in _bottleneck_chains(model)]
    assert found == expected  # the residual-feeding last conv, the shortcut and the stem are never producers


def test_pruned_channel_constant_is_the_producers_output():
    model = _pruned_resnet()
    sh.squash(model)
    chain = find_conv_chains(model)[1]
    layer = model.get_submodule(chain["conv"].rsplit(".", 1)[0])
    dead = (layer.convolution.weight.flatten(1) == 0).all(1).nonzero().flatten()
    with torch.no_grad():
        feature_map = layer(torch.randn(2, layer.convolution.in_channels, 6, 6))[:, dead]
    constants = pruned_channel_outputs(layer.convolution, layer.normalization, layer.activation, dead)
    torch.testing.assert_close(feature_map, constants.float().reshape(1, -1, 1, 1).expand_as(feature_map))


def test_resnet_per_layer_slim_is_exact_reports_border_channels_and_loads(tmp_path):
    model = _pruned_resnet()
    inputs = resnet_inputs()
    masked = _logits(model, inputs)
    sh.squash(model)
    removed, kept_masked, widths = _predicted_conv_slim(model)
    params = _predicted_conv_params_removed(model, widths)
    with pytest.raises(ValueError, match="mode='per_layer'"):
        slim(model)  # uniform: ResNetConfig has per-stage widths only
    summary = slim(model, mode="per_layer")
    assert [c["before"] - c["after"] for c in summary["convs"]] == removed and sum(removed) > 0
    assert [c["kept_masked"] for c in summary["convs"]] == kept_masked and sum(kept_masked) > 0
    assert summary["params_removed"] == params
    assert summary["loading"] == "load_slim" and "not a family" in summary["loading_note"]  # no shipped CNN file
    left = {e["name"]: e for e in summary["left_masked"]}
    for record in summary["convs"]:
        if record["kept_masked"]:
            assert left[record["conv"]]["channels"] == record["kept_masked"]
            assert "border" in left[record["conv"]]["reason"]
    assert any("layer.2.convolution" in n for n in left)  # residual-feeding convs stay masked
    torch.testing.assert_close(_logits(model, inputs), masked, atol=1e-4, rtol=0)
    save_pruned(model, tmp_path, save_plots=False)
    loaded = load_slim(tmp_path)
    assert sum(p.numel() for p in loaded.parameters()) == summary["params_after"]
    torch.testing.assert_close(_logits(loaded, inputs), masked, atol=1e-4, rtol=0)
    assert sh.sparsity_report(loaded)["valid"]


def _conv_output_shapes(model, inputs):
    """``{conv name: output shape}`` of one forward."""
    shapes, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(
                module.register_forward_hook(lambda _m, _a, out, name=name: shapes.update({name: out.shape}))
            )
    _logits(model, inputs)
    for handle in handles:
        handle.remove()
    return shapes


def test_conv_macs_prediction_matches_the_slim_module_shapes():
    model = _pruned_resnet()
    inputs = resnet_inputs()
    sh.squash(model)
    _, _, widths = _predicted_conv_slim(model)
    dense_shapes, convs = _conv_output_shapes(model, inputs), dict(model.named_modules())
    predicted = dense = 0
    for name, (batch, c_out, height, width) in dense_shapes.items():
        conv = convs[name]
        c_in, kept_out = widths.get((name, "in"), conv.in_channels), widths.get((name, "out"), c_out)
        predicted += conv_macs(height, width, c_in, kept_out, conv.kernel_size, conv.groups, batch)
        dense += conv_macs(height, width, conv.in_channels, c_out, conv.kernel_size, conv.groups, batch)
    slim(model, mode="per_layer")
    slim_convs = dict(model.named_modules())
    counted = sum(  # from the slim modules' real shapes: outputs x (C_in / groups * kh * kw) weights each
        shape.numel() * slim_convs[name].weight[0].numel()
        for name, shape in _conv_output_shapes(model, inputs).items()
    )
    assert predicted == counted < dense


@pytest.mark.parametrize("arch", ["vit", "bert", "resnet"])
def test_slimmed_widths_describe_every_changed_shape(arch):
    factory = {"vit": tiny_vit, "bert": tiny_bert, "resnet": tiny_resnet}[arch]
    model = _pruned_resnet() if arch == "resnet" else _head_pruned(factory)
    dense_shapes = {n: m.weight.shape for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    summary = slim(model, mode="per_layer")
    widths = slimmed_widths(model.config.smart_hf["slim"])
    assert widths and summary["params_removed"] > 0
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            change = widths.get(name, {})
            expected_out = change.get("out", (dense_shapes[name][0],) * 2)
            expected_in = change.get("in", (dense_shapes[name][1],) * 2)
            assert (dense_shapes[name][0], dense_shapes[name][1]) == (expected_out[0], expected_in[0])
            assert tuple(module.weight.shape[:2]) == (expected_out[1], expected_in[1])


def test_head_and_cnn_errors_name_the_fix():
    with pytest.raises(ValueError, match="no attention block"):
        head_pruning_overrides(tiny_resnet())
    with pytest.raises(ValueError, match="nothing to slim"):
        resnet = tiny_resnet()
        sh.prepare_model(resnet, sh.SmartConfig(pattern="block", block_shape=[1, 4]))
        slim(resnet, mode="per_layer")


def test_bench_inference_builds_the_head_and_resnet_slim_variants():
    """test_bench_scripts.py smoke-runs the four original variants; this covers slim-heads and the ResNet row
    in-process."""
    for name, variant in (("deit-tiny", "slim-heads"), ("resnet-50", "slim")):
        make_inputs, models, info = bench.variants(name, True, 0.5, 8, ("dense", variant), 0.5)
        assert set(models) == {"dense", variant}
        inputs = make_inputs(1)
        dense_flops, _ = bench.flops(models["dense"], inputs)
        slim_flops, _ = bench.flops(models[variant], inputs)
        assert slim_flops < dense_flops
        assert bench.weight_bytes(models[variant]) < bench.weight_bytes(models["dense"])
        if variant == "slim-heads":  # smoke DeiT: 2 heads, half removed; the attention term counts 1 head
            assert info["heads_kept_per_layer"] == [1]
            block = find_attention_blocks(models[variant])[0]
            tokens = (models[variant].config.image_size // models[variant].config.patch_size) ** 2 + 1
            expected = attention_macs(tokens, 1, block["head_dim"])
            assert bench.attention_flops_macs(models[variant], inputs) == expected


def test_bench_inference_builds_the_coupled_variants_with_every_unit_removed():
    """``coupled`` (per-layer slim) executes exactly the FLOP-ratio ideal: no pruned weight is left in place."""
    for name in ("deit-tiny", "minilm-l6"):
        make_inputs, models, info = bench.variants(name, True, 0.5, 8, ("dense", "coupled", "coupled-uniform"), 0.5)
        inputs = make_inputs(2)
        dense_flops, _ = bench.flops(models["dense"], inputs)
        executed, ideal = bench.flops(models["coupled"], inputs)
        assert info["coupled_left_masked"] == [] and executed == ideal < dense_flops
        executed, ideal = bench.flops(models["coupled-uniform"], inputs)
        assert ideal <= executed < dense_flops
        assert bench.weight_bytes(models["coupled"]) < bench.weight_bytes(models["dense"])
