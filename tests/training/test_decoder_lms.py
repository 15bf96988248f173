"""Decoder LMs with TRL's SFTTrainer + SmartCallback: tiny GPT-2 (transformers' Conv1D) and a tiny Llama-style model
(gate/up/down MLP, grouped-query attention with 2 key/value heads for 4 query heads, tied input/output embeddings).

TRL's default SFTConfig turns gradient checkpointing on; the run must give the masks and losses of the same run with
it off (losses to 1e-6 relative; they are equal in practice). The end-of-training artifact (``output_dir/pruned``)
and the Trainer's own ``save_model()`` both load with stock transformers and pass `check_sparsity`.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import tiny_models
import torch
from transformers import AutoModelForCausalLM

pytest.importorskip("trl")
from trl import SFTConfig, SFTTrainer  # noqa: E402

import smart_hf as sh  # noqa: E402
from smart_hf import SmartCallback  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"gpt2": tiny_models.tiny_gpt2, "llama": tiny_models.tiny_llama}


def _sft(name: str, output_dir, **overrides):
    torch.manual_seed(0)
    model = sh.prepare_model(MODELS[name](), sh.SmartConfig(pattern="block", block_shape=[8, 8], sparsity=0.5))
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        max_length=16,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        **overrides,
    )
    callback = SmartCallback(search_steps=4)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=tiny_models.text_dataset(32),
        processing_class=tiny_models.tiny_tokenizer(),
        callbacks=[callback],
    )
    trainer.train()
    return trainer, callback


@pytest.mark.parametrize("name", list(MODELS))
def test_sft_default_config_with_checkpointing_matches_without(tmp_path, name):
    plain, _ = _sft(name, tmp_path / "plain", gradient_checkpointing=False)
    ckpt, callback = _sft(name, tmp_path / "ckpt")  # TRL's default: gradient checkpointing on
    assert ckpt.args.gradient_checkpointing and ckpt.model.is_gradient_checkpointing
    losses = [e["loss"] for e in plain.state.log_history if "loss" in e]
    ckpt_losses = [e["loss"] for e in ckpt.state.log_history if "loss" in e]
    assert len(losses) == 8 and ckpt_losses == pytest.approx(losses, rel=1e-6)
    # both models were squashed at the end: the masks are the zero patterns of the targeted weights
    for folder in (tmp_path / "plain" / "pruned", tmp_path / "ckpt" / "pruned"):
        sh.check_sparsity(str(folder))
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "plain" / "pruned").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "pruned").state_dict()
    assert all(torch.equal(a[k] == 0, b[k] == 0) for k in a)
    assert callback.verification["verified"]


def test_llama_targets_and_stock_artifacts(tmp_path):
    """lm_head and the embeddings are not pruned; q/k/v/o (GQA: k/v are narrower) and gate/up/down are; the tie
    survives; the folder the Trainer's save_model() writes is stock-loadable and verified."""
    model = tiny_models.tiny_llama()
    config = sh.SmartConfig(pattern="block", block_shape=[8, 8], sparsity=0.5)
    targets = [name for name, *_ in sh.find_targets(model, config)]
    leaves = {t.rsplit(".", 1)[-1] for t in targets}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("lm_head" in t or "embed" in t for t in targets)
    trainer, _ = _sft("llama", tmp_path / "run")
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert not any("smart_" in k for k in loaded.state_dict())
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    sh.check_sparsity(str(out))
    sh.check_sparsity(str(tmp_path / "run" / "pruned"))
    trained = trainer.model.state_dict()  # (its forward is wrapped in TRL's default bf16 autocast: compare weights)
    assert loaded.state_dict().keys() == trained.keys()
    assert all(torch.equal(value, trained[key]) for key, value in loaded.state_dict().items())


def test_causal_lm_recipe_runs_offline_at_smoke_size(tmp_path):
    """The Hub recipe's script on a tiny local Llama and local text, with LoRA on: prune the base while the adapters
    train (TRL's default gradient checkpointing on), merge keeping 2:4 exact, verified stock-loadable artifact."""
    spec = importlib.util.spec_from_file_location("sft_causal_lm", ROOT / "examples" / "sft_causal_lm.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # its dataclasses look their module up there
    spec.loader.exec_module(script)
    model_dir = tmp_path / "model"
    tiny_models.tiny_llama().save_pretrained(model_dir)
    tiny_models.tiny_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in tiny_models.text_dataset(16)["text"]))
    smoke = {
        "model_name_or_path": model_dir,
        "dataset_name": "json",
        "data_files": data,
        "dataset_split": "train",
        "output_dir": tmp_path / "out",
        "max_steps": 6,
        "per_device_train_batch_size": 4,
        "max_length": 16,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": "true",
        "use_lora": "true",
        "lora_r": 4,
    }
    argv = [str(ROOT / "recipes" / "trl" / "smollm2_135m_2of4_sft.yaml")]
    for key, value in smoke.items():
        argv += [f"--{key}", str(value)]
    pruned = script.main(argv)
    result = sh.check_sparsity(pruned)
    assert result["layers"] and all(row["pattern"] == "nm" for row in result["layers"])
    assert abs(result["total"]["sparsity"] - 0.5) < 1e-9
    AutoModelForCausalLM.from_pretrained(pruned)


def test_sft_peft_config_freezing_the_scores_is_an_error(tmp_path):
    """SFTTrainer(peft_config=...) wraps the model with PEFT's own get_peft_model, which freezes the mask scores:
    training refuses to start, naming smart_hf's get_peft_model."""
    peft = pytest.importorskip("peft")
    model = sh.prepare_model(tiny_models.tiny_gpt2(), sh.SmartConfig(pattern="block", block_shape=[8, 8]))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, max_length=16, report_to=[], use_cpu=True),
        train_dataset=tiny_models.text_dataset(8),
        processing_class=tiny_models.tiny_tokenizer(),
        peft_config=peft.LoraConfig(r=4, target_modules=["c_attn"]),
        callbacks=[SmartCallback()],
    )
    with pytest.raises(ValueError, match="smart_hf.integrations.peft.get_peft_model"):
        trainer.train()
