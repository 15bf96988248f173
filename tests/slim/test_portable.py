"""Per-layer slim artifacts load with stock transformers (``trust_remote_code=True``) in a process where smart_hf
cannot be imported; uniform slim stays stock; the card and the summary line say what slimming removed."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from tiny_models import text_inputs, tiny_bert, tiny_deit, tiny_gpt2, tiny_llama, tiny_roberta, tiny_vit, vit_inputs
from torch import nn
from transformers import PretrainedConfig

import smart_hf as sh
from smart_hf.artifact.card import card_tags, model_card, natural_key
from smart_hf.cli.slim_table import format_artifact_rows
from smart_hf.metadata import read as read_metadata
from smart_hf.slim import head_pruning_overrides, load_slim
from smart_hf.slim.describe import removed_units, slim_summary_line, speedup_rows, widths_table
from smart_hf.slim.portable import MODELING_FILE, slim_layer_widths
from smart_hf.slim.remote import modeling_smart_slim

# name -> (factory, inputs, the stock Auto class a user would call)
# newer transformers configs carry per-layer overrides (`per_layer_config`); the supported floor (5.9) does not
HAS_PER_LAYER_CONFIG = hasattr(PretrainedConfig, "per_layer_config")

FAMILIES = {
    "bert": (tiny_bert, text_inputs, "AutoModelForSequenceClassification"),
    "roberta": (tiny_roberta, text_inputs, "AutoModelForSequenceClassification"),
    "vit": (tiny_vit, vit_inputs, "AutoModelForImageClassification"),
    "deit": (tiny_deit, vit_inputs, "AutoModelForImageClassification"),
    "gpt2": (tiny_gpt2, text_inputs, "AutoModelForCausalLM"),
    "llama": (tiny_llama, text_inputs, "AutoModelForCausalLM"),
}

# Runs without smart_hf: a meta-path finder refuses every smart_hf module, so only the shipped file can build the
# models. Prints one JSON line: per artifact the max |logit diff| with trust_remote_code=True, and the error
# stock loading raises without it.
_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "smart_hf" or name.startswith("smart_hf."):
                raise ImportError(name + " is not installed here")

    sys.meta_path.insert(0, Refuse())
    import torch, transformers

    results = {}
    for folder, auto_name in json.loads(sys.argv[1]):
        auto = getattr(transformers, auto_name)
        ref = torch.load(folder + "/reference.pt")
        model = auto.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            diff = float((model(**ref["inputs"]).logits - ref["logits"]).abs().max())
        try:
            auto.from_pretrained(folder)
            refused = ""
        except ValueError as err:
            refused = str(err)
        results[folder] = {"diff": diff, "class": type(model).__name__, "refused": refused}
    results["smart_hf_imported"] = any(m.split(".")[0] == "smart_hf" for m in sys.modules)
    print("RESULT " + json.dumps(results))
    """
)


def _coupled_slim(family: str, mode: str = "per_layer", budget: str = "global"):
    build, make_inputs, _ = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    cfg = sh.SmartConfig(pattern="coupled", sparsity=0.5, budget=budget, score_noise=1.0, coupled_tokens=8)
    sh.prepare_model(model, cfg)
    sh.harden(model)
    inputs = make_inputs()
    with torch.no_grad():
        masked = model(**inputs).logits
    summary = sh.slim(model, mode=mode)
    return model, inputs, masked, summary


def _bert_heads_slim():
    """Channel-pruned FFNs and head-pruned attention (the non-coupled records: ``pairs`` and ``heads``)."""
    torch.manual_seed(1)
    model = tiny_bert().eval()
    cfg = sh.SmartConfig(pattern="channel", sparsity=0.5, overrides=head_pruning_overrides(model, 0.5))
    sh.prepare_model(model, cfg)
    sh.harden(model)
    inputs = text_inputs()
    with torch.no_grad():
        masked = model(**inputs).logits
    return model, inputs, masked, sh.slim(model, mode="per_layer")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Per-layer slim artifacts of every family (coupled units) plus a BERT with channel and head records."""
    root = tmp_path_factory.mktemp("slim")
    out = {}
    cases = {name: (lambda n=name: _coupled_slim(n), FAMILIES[name][2]) for name in FAMILIES}
    cases["bert-heads"] = (_bert_heads_slim, "AutoModelForSequenceClassification")
    for name, (make, auto) in cases.items():
        model, inputs, masked, summary = make()
        folder = str(root / name)
        sh.save_pruned(model, folder, save_plots=False)
        torch.save({"inputs": inputs, "logits": masked}, os.path.join(folder, "reference.pt"))
        out[name] = {"folder": folder, "auto": auto, "summary": summary, "inputs": inputs, "masked": masked}
    return out


def test_per_layer_artifacts_load_with_stock_transformers_without_smart_hf(artifacts, tmp_path):
    for name, art in artifacts.items():
        assert art["summary"]["loading"] == "trust_remote_code", name
        assert os.path.isfile(os.path.join(art["folder"], MODELING_FILE))
    jobs = json.dumps([[a["folder"], a["auto"]] for a in artifacts.values()])
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", _LOADER, jobs],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.rsplit("RESULT ", 1)[1])  # after the y/N prompt transformers prints
    assert results.pop("smart_hf_imported") is False
    for name, art in artifacts.items():
        result = results[art["folder"]]
        assert result["diff"] <= 1e-4, (name, result)
        assert result["class"].startswith("SmartSlim"), (name, result)
        # nothing shipped runs unasked: transformers' own refusal, naming the fix
        assert "contains custom code" in result["refused"] and "trust_remote_code=True" in result["refused"], name


def test_config_records_the_widths_per_layer_and_in_per_layer_config(artifacts):
    for name, art in artifacts.items():
        with open(os.path.join(art["folder"], "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        family = name.split("-")[0]
        assert config["model_type"] == f"smart_slim_{family}"
        assert config["auto_map"][art["auto"]].startswith("modeling_smart_slim.SmartSlim")
        assert config["smart_slim_shapes"], name
        widths = slim_layer_widths(art["summary"])
        ffn_key = "n_inner" if family == "gpt2" else "intermediate_size"
        if not HAS_PER_LAYER_CONFIG:  # transformers without the per-layer schema: the widths live in smart_slim_*
            assert "per_layer_config" not in config, name
            continue
        per_layer = {int(k): v for k, v in config["per_layer_config"].items()}
        for layer, kept in widths.items():  # an entry equal to the global width is left out by transformers
            if "ffn" in kept and kept["ffn"][1] != kept["ffn"][0]:
                assert per_layer[layer][ffn_key] == kept["ffn"][1], (name, layer)
        if family in ("llama", "vit", "deit"):  # the head size is pinned (config.head_dim): head counts too
            heads = {layer: kept["heads"] for layer, kept in widths.items() if "heads" in kept}
            assert config["head_dim"] == (8 if family == "llama" else 16)
            for layer, (before, after) in heads.items():
                assert after == before or per_layer[layer]["num_attention_heads"] == after, (name, layer)
        else:  # BERT, RoBERTa and GPT-2 derive the head size from the head count: no per-layer head counts
            assert not any("num_attention_heads" in entry for entry in per_layer.values()), name


def test_load_slim_loads_the_portable_artifacts_with_its_own_copy(artifacts):
    for name in ("bert", "llama", "bert-heads"):
        art = artifacts[name]
        model = load_slim(art["folder"])
        assert type(model).__module__ == modeling_smart_slim.__name__
        with torch.no_grad():
            torch.testing.assert_close(model(**art["inputs"]).logits, art["masked"], atol=1e-4, rtol=0)


def test_loaded_decoders_generate_like_a_full_forward(artifacts):
    for name in ("gpt2", "llama"):  # the KV cache follows the per-layer key/value widths
        model = load_slim(artifacts[name]["folder"])
        ids = artifacts[name]["inputs"]["input_ids"][:1, :4]
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
        seq = ids
        with torch.no_grad():
            for _ in range(4):
                seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert generated.tolist() == seq.tolist(), name


def test_shipped_file_resizes_only_linear_layers_to_positive_sizes():
    model = tiny_bert()
    config = model.config
    config.smart_slim_shapes = {"bert.embeddings.LayerNorm": [4, 4]}
    with pytest.raises(ValueError, match="not a linear layer"):
        modeling_smart_slim.resize_to_recorded_widths(model, config)
    config.smart_slim_shapes = {"bert.encoder.layer.0.intermediate.dense": [0, 32]}
    with pytest.raises(ValueError, match="positive integers"):
        modeling_smart_slim.resize_to_recorded_widths(model, config)
    config.smart_slim_shapes = {}
    config.smart_slim_attributes = {"bert.encoder.layer.0.attention.self": {"training": 1}}
    with pytest.raises(ValueError, match="head-count attribute"):
        modeling_smart_slim.resize_to_recorded_widths(model, config)
    config.smart_slim_attributes = {"bert.encoder.layer.0.attention.self": {"num_attention_heads": 1}}
    modeling_smart_slim.resize_to_recorded_widths(model, config)
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 1


def test_uniform_slim_stays_stock_without_remote_code(tmp_path):
    model, *_, summary = _coupled_slim("vit", mode="uniform", budget="layer")
    assert summary["loading"] == "stock"
    sh.save_pruned(model, tmp_path, save_plots=False)
    with open(tmp_path / "config.json", encoding="utf-8") as fh:
        config = json.load(fh)
    assert config["model_type"] == "vit" and "auto_map" not in config
    assert not (tmp_path / MODELING_FILE).exists()


def test_uniform_slim_of_a_global_budget_says_what_it_kept(caplog):
    with caplog.at_level(logging.WARNING, logger="smart_hf.slim.api"):
        _, _, _, summary = _coupled_slim("bert", mode="uniform")
    text = caplog.text
    assert "uniform slimming kept" in text and f"{summary['params_after']:,}" in text
    assert "attention" in text or "heads" in text  # BERT's heads: the config cannot describe them
    assert "mode='per_layer'" in text and "budget='layer'" in text


def test_summary_line_counts_coupled_units():
    *_, summary = _coupled_slim("llama")
    line = slim_summary_line(summary)
    units = removed_units(summary)
    assert units["ffn"][1] < units["ffn"][0] and "FFN neurons" in line
    assert "0 of 0" not in line and f"{summary['params_before']:,}" in line
    assert line.endswith("left masked in place: 0 layer(s)")


def _fake_summary(layers: int = 12) -> dict:
    coupled = [
        {"set": {"kind": "ffn", "owner": f"model.layers.{i}.mlp.down_proj", "units": 64}, "after": 64 - i}
        for i in range(layers)
    ]
    return {"mode": "per_layer", "pairs": [], "heads": [], "convs": [], "coupled": coupled, "params_before": 100,
            "params_after": 60, "params_removed": 40, "loading": "trust_remote_code"}


def test_widths_table_lists_every_layer_in_numeric_order():
    table = widths_table(_fake_summary())
    layers = [int(line.split("|")[1]) for line in table.splitlines()[2:]]
    assert layers == list(range(12))
    assert "| 10 | 54/64 |" in table
    assert sorted(["l.10.x", "l.2.x", "l.1.x"], key=natural_key) == ["l.1.x", "l.2.x", "l.10.x"]


def test_coupled_and_slim_cards_say_what_was_removed():
    model, *_, summary = _coupled_slim("llama")
    metadata = read_metadata(model.config)
    report = sh.sparsity_report(model)
    measured = {"eager": {"batch 8": 1.8, "batch 32": 1.9}}
    text = str(model_card(model.config, metadata, report, measured_speedup=measured))
    assert "structured-pruning" in card_tags(metadata) and "block-sparse" not in card_tags(metadata)
    assert "bsr" not in text.lower() and "of the targeted weights are zero" not in text
    assert "FFN neurons" in text and f"{summary['params_after']:,}" in text
    assert "## Widths per layer" in text and "trust_remote_code=True" in text
    assert "| eager, batch 32 | 1.90x |" in text
    assert "Stock transformers, no smart_hf needed:" not in text  # it needs trust_remote_code=True
    assert "## Per-layer sparsity" not in text  # every pruned unit is gone: no zeros to tabulate
    assert speedup_rows(None) == []


def test_coupled_card_before_slimming_points_to_slim_not_bsr():
    model = tiny_llama().eval()
    sh.prepare_model(model, sh.SmartConfig(pattern="coupled", sparsity=0.5, coupled_tokens=8))
    sh.harden(model)
    metadata, report = sh.lifecycle.pruning_metadata(sh.get_smart_state(model))
    text = str(model_card(model.config, metadata, report))
    assert "structured-pruning" in text and "block-sparse" not in text
    assert "smart_hf.slim(model, mode='per_layer')" in text and "bsr" not in text.lower()


def test_models_the_shipped_file_does_not_cover_keep_load_slim():
    model = nn.Sequential(nn.Linear(2, 2))
    model.config = tiny_gpt2().config
    from smart_hf.slim.portable import make_portable

    assert "not a family" in make_portable(model, {})


def test_final_table_says_what_slimming_removed_and_how_it_loads():
    row = {"parameters": 10, "nonzero_parameters": 10, "file_mb": 1.0, "latency_ms": 2.0}
    extra = {
        "cost_removed": 0.5,
        "dense": row,
        "pruned": row,
        "slim": {**row, "latency_ms": 1.0},
        "summary_line": "slimmed (per_layer): removed 8 of 16 FFN neurons; 10 -> 6 parameters (-40.0%)",
        "slim_loading": "trust_remote_code",
        "slim_mode": "per_layer",
        "slim_dir": "out/slim",
        "max_abs_logit_diff": 0.0,
        "batch": 4,
        "loadavg_1m": 1.0,
    }
    text = "\n".join(format_artifact_rows(extra))
    assert "removed 8 of 16 FFN neurons" in text and "trust_remote_code=True" in text
