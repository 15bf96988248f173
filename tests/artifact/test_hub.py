"""Model card and Hub push, without network: the upload is intercepted, the written folder is loaded back."""

import logging
import os

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, RepoUrl
from tiny_models import text_inputs, tiny_bert, tiny_vit, vit_inputs
from training.test_trainer import smart_args, tiny_dataset
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

import smart_hf as sh
from smart_hf.artifact.card import card_tags
from smart_hf.artifact.export import save_pruned
from smart_hf.artifact.hub import push_pruned_to_hub

SECRET = "hf_SECRETtoken0123456789"


def _pruned(factory, **cfg):
    model = factory().eval()
    sh.prepare_model(model, sh.SmartConfig(**cfg))
    sh.harden(model)
    return model


@pytest.fixture
def online(monkeypatch):
    """Pretend the Hub is reachable and intercept every call that would reach it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = repo_id
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'user/' + repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls["upload"] = {
            "repo_id": repo_id,
            "folder": folder_path,
            "files": sorted(os.listdir(folder_path)),
            "token": self.token,
            **kwargs,
        }
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    # older transformers (5.9) create the repo in Trainer.__init__ through a module-level `create_repo`, a method
    # bound to huggingface_hub's default HfApi at import time, which the class patch above does not reach
    import transformers.trainer

    monkeypatch.setattr(
        transformers.trainer, "create_repo", lambda repo_id, **kw: create_repo(HfApi(), repo_id), raising=False
    )
    return calls


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        ({"pattern": "nm"}, {"2:4", "n:m-sparse"}),
        ({"pattern": "block", "block_shape": [4, 4]}, {"block-sparse"}),
        ({"pattern": "channel", "sparsity": 0.3}, {"channel-pruned"}),
    ],
)
def test_card_tags_by_pattern(cfg, expected):
    model = _pruned(tiny_vit, **cfg)
    tags = card_tags(sh.lifecycle.pruning_metadata(sh.get_smart_state(model))[0])
    assert {"pruned", "sparse", "smart-hf"} | expected == set(tags)


def test_save_pruned_writes_a_model_card(tmp_path):
    model = _pruned(tiny_bert, pattern="nm")
    model.config._name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    save_pruned(model, tmp_path, metrics={"eval_accuracy": 0.875}, save_plots=False)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"pruned", "sparse", "smart-hf", "2:4", "n:m-sparse"} <= set(card.data.tags)
    text = card.text
    assert "BertForSequenceClassification.from_pretrained" in text and "0.8750" in text
    assert "`bert.encoder.layer.0.intermediate.dense`" in text and "semi-structured" in text
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


def test_local_path_is_not_a_base_model(tmp_path):
    model = _pruned(tiny_vit)
    model.config._name_or_path = str(tmp_path)
    save_pruned(model, tmp_path / "out", save_plots=False)
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model is None


def test_push_writes_the_exact_folder_and_uploads_it(tmp_path, online, caplog):
    model = _pruned(tiny_vit, pattern="block", block_shape=[4, 4])
    local = tmp_path / "artifact"
    with caplog.at_level(logging.DEBUG):
        assert push_pruned_to_hub(model, "me/tiny-vit-pruned", token=SECRET, local_dir=local, save_plots=False)
    upload = online["upload"]
    assert upload["repo_id"] == "me/tiny-vit-pruned" and online["create_repo"] == "me/tiny-vit-pruned"
    assert upload["folder"] == str(local)
    for name in ("README.md", "config.json", "model.safetensors", "smart_config.json", "smart_sparsity.json"):
        assert name in upload["files"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp folder left behind
    reloaded = AutoModelForImageClassification.from_pretrained(local).eval()
    inputs = vit_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)
    assert SECRET not in (local / "README.md").read_text() and SECRET not in caplog.text
    assert 'ViTForImageClassification.from_pretrained("me/tiny-vit-pruned")' in (local / "README.md").read_text()
    assert all(SECRET not in (local / f).read_text() for f in os.listdir(local) if f.endswith((".json", ".md")))


def test_push_of_a_saved_folder(tmp_path, online):
    model = _pruned(tiny_vit)
    save_pruned(model, tmp_path / "out", save_plots=False, model_card=False)
    push_pruned_to_hub(tmp_path / "out", "me/x", token=SECRET)
    assert "README.md" in online["upload"]["files"]  # a missing card is generated first


def test_missing_token_is_a_clear_error_and_keeps_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda *a, **k: pytest.fail("must not upload"))
    local = tmp_path / "artifact"
    with pytest.raises(ValueError, match="huggingface-cli login.*HF_TOKEN"):
        push_pruned_to_hub(_pruned(tiny_vit), "me/x", local_dir=local, save_plots=False)
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(local))
    AutoModelForImageClassification.from_pretrained(local)


def test_offline_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unset HF_HUB_OFFLINE"):
        push_pruned_to_hub(_pruned(tiny_vit), "me/x", token=SECRET, local_dir=tmp_path / "a", save_plots=False)
    assert (tmp_path / "a" / "model.safetensors").is_file()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="local_dir"):
        push_pruned_to_hub(_pruned(tiny_vit), "me/x", token=SECRET)
    with pytest.raises(ValueError, match="repo_id"):
        push_pruned_to_hub(tmp_path, "not a repo id", token=SECRET)
    with pytest.raises(ValueError, match="config.json"):
        push_pruned_to_hub(tmp_path, "me/x", token=SECRET)


def test_trainer_push_to_hub_pushes_the_pruned_artifact(tmp_path, online, caplog):
    from smart_hf.training.trainer import SmartTrainer

    args = smart_args(
        tmp_path,
        max_steps=8,
        pretrain_steps=0,
        search_steps=4,
        push_to_hub=True,
        hub_model_id="me/smart-vit",
        hub_token=SECRET,
        hub_strategy="end",
    )
    trainer = SmartTrainer(
        model=tiny_vit(), args=args, smart_config=sh.SmartConfig(sparsity=0.5), train_dataset=tiny_dataset()
    )
    with caplog.at_level(logging.DEBUG):
        trainer.train()
        trainer.push_to_hub()
    upload = online["upload"]
    assert upload["repo_id"] == "me/smart-vit" and upload["token"] == SECRET
    assert {"README.md", "model.safetensors", "smart_config.json", "smart_sparsity.json"} <= set(upload["files"])
    loaded = AutoModelForImageClassification.from_pretrained(upload["folder"]).eval()
    assert sh.sparsity_report(loaded)["valid"] and "smart_scores" not in str(loaded.state_dict().keys())
    inputs = vit_inputs()
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, trainer.model(**inputs).logits, atol=1e-5, rtol=0)
    assert SECRET not in (tmp_path / "hub_artifact" / "README.md").read_text() and SECRET not in caplog.text
