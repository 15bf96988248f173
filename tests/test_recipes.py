"""The two embedded recipes run end to end at smoke size and beat chance (real data that ships offline)."""

import json
from pathlib import Path

import pytest
import torch

from smart_hf.cli.commands import parse_recipe
from smart_hf.cli.train import run_training

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMOKE = ["--logging_steps", "10", "--eval_strategy", "no", "--save_plots", "false"]


@pytest.fixture(autouse=True)
def _two_threads():
    """These runs use DeiT-tiny and MiniLM shapes, which do use the machine's 2 cores (conftest sets 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _run(recipe: str, tmp_path, extra: list[str]) -> dict:
    args = parse_recipe(str(RECIPES / recipe), [*SMOKE, "--output_dir", str(tmp_path), *extra])
    summary = run_training(*args)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "smart_config.json").is_file()
    assert json.loads((tmp_path / "smart_summary.json").read_text()) == summary
    return summary


def test_deit_digits_block_smoke(tmp_path):
    summary = _run(
        "deit_digits_block.yaml",
        tmp_path,
        ["--max_steps", "80", "--pretrain_steps", "40", "--search_steps", "20", "--learning_rate", "0.001"],
    )
    assert summary["pattern_valid"] and abs(summary["targeted_sparsity"] - 0.5) < 1e-3
    assert 0.09 < summary["test_majority_share"] < 0.12  # 10 near-balanced classes
    assert summary["pruned"]["test_accuracy"] > summary["test_majority_share"] + 0.1
    assert summary["dense"]["test_accuracy"] is not None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minilm_tweets_2of4_smoke(tmp_path):
    summary = _run(
        "minilm_tweets_2of4.yaml",
        tmp_path,
        [
            "--max_steps",
            "48",
            "--pretrain_steps",
            "24",
            "--search_steps",
            "12",
            "--train_size",
            "800",
            "--val_size",
            "100",
            "--test_size",
            "400",
            "--learning_rate",
            "0.0001",
            "--per_device_train_batch_size",
            "16",
        ],
    )
    assert summary["pattern_valid"] and abs(summary["targeted_sparsity"] - 0.5) < 1e-6
    majority = summary["test_majority_share"]
    assert 0.6 < majority < 0.8  # the binary split is ~30% positive: always saying "negative" scores ~0.70
    assert summary["pruned"]["test_accuracy"] > majority
