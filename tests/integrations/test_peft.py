"""PEFT (LoRA) with SMART: the supported orders work, every other order is a clear error (smart_hf.integrations.peft).

Supported: (1) prepare_model -> smart_hf's get_peft_model -> train: the base is searched and pruned (scores
trainable), the adapters train dense and are never pruned; (2) LoRA on a hardened prepared model or on a pruned
artifact loaded with stock from_pretrained; (3) merge_and_unload keeps the base's sparsity exact and reports the part
of the LoRA update the masks removed; the saved artifact passes check_sparsity and reloads with stock transformers.
"""

import pytest
import tiny_models
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

peft = pytest.importorskip("peft")

import smart_hf as sh  # noqa: E402
from smart_hf import SmartCallback, SmartTrainer, SmartTrainingArguments  # noqa: E402
from smart_hf.integrations.peft import get_peft_model, merge_and_unload  # noqa: E402

CONFIG = dict(pattern="block", block_shape=[8, 8], sparsity=0.5)
LORA_TARGETS = {
    "bert": ["query", "value", "dense"],
    "gpt2": ["c_attn", "c_fc"],
    "llama": ["q_proj", "v_proj", "up_proj"],
}
MODELS = {"bert": tiny_models.tiny_bert, "gpt2": tiny_models.tiny_gpt2, "llama": tiny_models.tiny_llama}


def lora(name: str, **kw):
    # init_lora_weights=False: B is random too, so the update is non-zero before any training
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[name], init_lora_weights=False, **kw)


def prepared(name: str, hard: bool = False):
    torch.manual_seed(0)
    model = sh.prepare_model(MODELS[name](), sh.SmartConfig(**CONFIG))
    if hard:
        sh.harden(model)
    return model


def train(model, tmp_path, steps: int = 10, **callback_kw):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_models.lm_dataset(16), callbacks=[SmartCallback(**callback_kw)]
    )
    trainer.train()
    return trainer


def assert_stock_artifact(merged, folder):
    """check_sparsity passes on the saved folder, and stock from_pretrained gives the merged model's weights."""
    sh.check_sparsity(str(folder))
    loaded = type(merged).from_pretrained(folder)
    expected = merged.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_prune_the_base_while_lora_trains(tmp_path):
    model = get_peft_model(prepared("llama"), lora("llama"))
    state = sh.get_smart_state(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "smart_scores" in n} and all(
        "lora_" in n or "smart_scores" in n for n in trainable
    )
    assert not any("lora" in name for name in state.targeted_module_names)  # adapters are never pruned
    scores = [layer.smart_scores.detach().clone() for layer in state.layers]
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    train(model, tmp_path, search_steps=5)
    assert state.is_hard
    assert any(not torch.equal(s, layer.smart_scores) for s, layer in zip(scores, state.layers))  # the search learned
    assert any(not torch.equal(p, dict(model.named_parameters())[n]) for n, p in lora_b.items())  # adapters trained
    with pytest.raises(ValueError, match="merge_and_unload"):
        sh.save_pruned(model, tmp_path / "unmerged")
    merged, report = merge_and_unload(model, return_report=True)
    assert set(report["layers"]) == {
        n for n in state.targeted_module_names if n.rsplit(".", 1)[-1] in LORA_TARGETS["llama"]
    }
    assert 0.0 < report["removed_fraction"] < 1.0
    assert not any("lora" in n for n, _ in merged.named_modules())
    sh.check_sparsity(merged)
    assert_stock_artifact(merged, sh.save_pruned(merged, tmp_path / "merged"))


def test_smart_trainer_searches_under_lora(tmp_path):
    model = get_peft_model(prepared("gpt2"), lora("gpt2"))
    args = SmartTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=8,
        search_steps=4,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        save_plots=False,
        log_hardening_jump=False,
    )
    trainer = SmartTrainer(model=model, args=args, train_dataset=tiny_models.lm_dataset(16))
    score_group = trainer.create_optimizer().param_groups[-1]["params"]
    assert len(score_group) == len(sh.get_smart_state(model).layers)
    trainer.train()
    merged = merge_and_unload(model)
    assert_stock_artifact(merged, sh.save_pruned(merged, tmp_path / "merged"))


@pytest.mark.parametrize("name", list(MODELS))
def test_lora_on_a_hardened_model_merges_exactly(tmp_path, name):
    """Conv1D (GPT-2, PEFT's fan_in_fan_out), Linear (BERT, Llama): the merge zeroes exactly the pruned weights."""
    model = peft.get_peft_model(prepared(name, hard=True), lora(name))  # PEFT's own: the masks are final
    before = sh.check_sparsity(model)["total"]
    merged, report = merge_and_unload(model, return_report=True)
    assert report["removed_fraction"] > 0
    assert sh.check_sparsity(merged)["total"] == before
    assert_stock_artifact(merged, sh.save_pruned(merged, tmp_path / "merged"))


def test_lora_on_a_loaded_pruned_artifact(tmp_path):
    folder = sh.save_pruned(prepared("bert", hard=True), tmp_path / "pruned")
    model = peft.get_peft_model(BertForSequenceClassification.from_pretrained(folder), lora("bert"))
    merged, report = merge_and_unload(model, return_report=True)
    assert report["removed_fraction"] > 0
    assert_stock_artifact(merged, sh.save_pruned(merged, tmp_path / "merged"))


@pytest.mark.parametrize("base", ["prepared", "loaded"])
def test_peft_own_merge_is_refused_at_save(tmp_path, base):
    """PEFT's merge_and_unload writes the update into pruned weights: save_pruned refuses and writes nothing."""
    model = prepared("bert", hard=True)
    if base == "loaded":
        model = BertForSequenceClassification.from_pretrained(sh.save_pruned(model, tmp_path / "pruned"))
    merged = peft.get_peft_model(model, lora("bert")).merge_and_unload()
    with pytest.raises(ValueError, match="contradict the pruning masks.*merge_and_unload"):
        sh.save_pruned(merged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapters_before_prepare_model_is_an_error():
    model = peft.get_peft_model(MODELS["bert"](), lora("bert"))
    for candidate in (model, model.get_base_model()):
        with pytest.raises(ValueError, match=r"prepare_model\(base, config\).*get_peft_model"):
            sh.prepare_model(candidate, sh.SmartConfig(**CONFIG))


def test_frozen_scores_are_an_error(tmp_path):
    """PEFT's own get_peft_model on a model still to be searched freezes the scores: training refuses to start."""
    model = peft.get_peft_model(prepared("llama"), lora("llama"))
    with pytest.raises(ValueError, match="scores are frozen.*smart_hf.integrations.peft.get_peft_model"):
        train(model, tmp_path)


def test_unsupported_compositions_are_errors():
    with pytest.raises(ValueError, match="LoRA"):
        get_peft_model(prepared("bert"), peft.IA3Config(target_modules=["query"], feedforward_modules=[]))
    with pytest.raises(ValueError, match="use_dora"):
        get_peft_model(prepared("bert"), lora("bert", use_dora=True))
    with pytest.raises(ValueError, match="modules_to_save"):
        get_peft_model(prepared("bert"), lora("bert", modules_to_save=["pooler.dense"]))
    with pytest.raises(ValueError, match="harden"):
        merge_and_unload(peft.get_peft_model(prepared("bert"), lora("bert")))
    with pytest.raises(ValueError, match="PEFT model"):
        merge_and_unload(prepared("bert", hard=True))
    with pytest.raises(ValueError, match="prepare_model"):
        get_peft_model(MODELS["bert"](), lora("bert"))
