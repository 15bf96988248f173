"""`smart-hf export` / `smart-hf push` and the reproducing command in the card (no network)."""

import os

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi
from tiny_models import tiny_vit, vit_inputs
from transformers import AutoModelForImageClassification

import smart_hf as sh
from smart_hf.artifact.export import save_pruned
from smart_hf.cli.commands import main


@pytest.fixture
def artifact(tmp_path):
    model = tiny_vit().eval()
    sh.prepare_model(model, sh.SmartConfig(pattern="channel", sparsity=0.5, budget="layer"))
    sh.harden(model)
    save_pruned(model, tmp_path / "run", save_plots=False)
    with torch.no_grad():
        logits = model(**(inputs := vit_inputs())).logits
    return tmp_path / "run", inputs, logits


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.mark.parametrize("extra", [[], ["--slim"]])
def test_export_writes_a_stock_loadable_folder(artifact, tmp_path, capsys, extra):
    source, inputs, logits = artifact
    target = tmp_path / "exported"
    assert main(["export", str(source), "--to", str(target), *extra]) == 0
    assert {"README.md", "config.json", "model.safetensors", "smart_config.json"} <= set(os.listdir(target))
    loaded = AutoModelForImageClassification.from_pretrained(target)
    torch.testing.assert_close(_logits(loaded, inputs), logits, atol=1e-4, rtol=0)
    if extra:
        assert loaded.config.intermediate_size < 64 and "slimmed 2 FFN" in capsys.readouterr().out


def test_export_per_layer_slim_loads_with_load_slim(artifact, tmp_path):
    source, inputs, logits = artifact
    assert main(["export", str(source), "--to", str(tmp_path / "s"), "--slim", "--mode", "per_layer"]) == 0
    torch.testing.assert_close(_logits(sh.load_slim(tmp_path / "s"), inputs), logits, atol=1e-4, rtol=0)


def test_export_errors(tmp_path, capsys):
    tiny_vit().save_pretrained(tmp_path / "plain")
    assert main(["export", str(tmp_path / "plain"), "--to", str(tmp_path / "x")]) == 2
    assert "not a pruned smart_hf artifact" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing"), "--to", str(tmp_path / "x")]) == 2


def test_push_command(artifact, monkeypatch, capsys):
    source, *_ = artifact
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(source), "--repo-id", "me/x"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    seen = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: seen.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **k: seen.update(k))
    assert main(["push", str(source), "--repo-id", "me/x", "--private"]) == 0
    assert seen["repo"] == "me/x" and seen["folder_path"] == str(source)


def test_card_shows_the_train_command_without_tokens(artifact, tmp_path):
    command = ["smart-hf", "train", "--config", "r.yaml", "--hub_token", "hf_SECRET", "--push_to_hub", "true"]
    model = tiny_vit()
    sh.prepare_model(model, sh.SmartConfig())
    save_pruned(model, tmp_path / "c", save_plots=False, command=command)
    text = (tmp_path / "c" / "README.md").read_text()
    assert "smart-hf train --config r.yaml --hub_token '***'" in text and "hf_SECRET" not in text


def test_every_file_of_the_artifact_has_the_same_mode(tmp_path):
    """``save_pretrained`` writes its safetensors shards through a temporary file (mode 0600): the artifact still
    publishes them with the mode of every other file."""
    model = sh.prepare_model(tiny_vit(), sh.SmartConfig())
    folder = save_pruned(model, tmp_path / "artifact", save_plots=False)
    modes = {name: os.stat(os.path.join(folder, name)).st_mode & 0o777 for name in os.listdir(folder)}
    assert "model.safetensors" in modes and len(set(modes.values())) == 1, modes
