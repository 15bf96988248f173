"""The command line: recipes parse and bad keys fail with their names; `smart-hf train` on a user's own image folders
and text files end to end; user errors exit with 2 and the fix, without a traceback; defaults that do not hide work."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from tiny_models import tiny_vit
from training.test_trainer import tiny_dataset
from transformers import (
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    DeiTConfig,
)

import smart_hf as sh
import smart_hf.cli.train as run
from smart_hf import SmartTrainer, SmartTrainingArguments
from smart_hf.cli.commands import main, parse_recipe
from smart_hf.constants import PATTERNS
from smart_hf.demo_data import minilm_path, tweet_sentiment_corpus
from smart_hf.report import sparsity_report

RECIPES = sorted(Path(__file__).resolve().parents[2].joinpath("recipes").glob("*.yaml"))
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "deit_digits_block.yaml"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    model_args, data_args, smart_config, training_args = parse_recipe(str(recipe))
    assert training_args.output_dir and smart_config.pattern in PATTERNS


def test_command_line_overrides_recipe():
    recipe = str(DEFAULT_RECIPE)
    *_, smart_config, training_args = parse_recipe(recipe, ["--sparsity", "0.75", "--max_steps", "7"])
    assert smart_config.sparsity == 0.75 and training_args.max_steps == 7


def test_tau_start_auto_is_accepted_in_recipes_and_on_the_command_line(tmp_path, capsys):
    """``auto`` is SmartConfig's spelling of the default start temperature; a number still overrides it."""
    recipe = tmp_path / "auto.yaml"
    recipe.write_text(DEFAULT_RECIPE.read_text() + "tau_start: auto\n")
    assert parse_recipe(str(recipe))[2].tau_start is None
    assert parse_recipe(str(recipe), ["--tau_start", "0.3"])[2].tau_start == 0.3
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(DEFAULT_RECIPE.read_text() + "tau_start: 1.0\n")
    assert parse_recipe(str(fixed))[2].tau_start == 1.0
    assert parse_recipe(str(fixed), ["--tau_start", "auto"])[2].tau_start is None
    with pytest.raises(ValueError, match="expected a number or 'auto', got 'hot'"):
        parse_recipe(str(DEFAULT_RECIPE), ["--tau_start", "hot"])
    assert "usage:" not in capsys.readouterr().err  # one error, not the parser's usage


def test_bad_recipe_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nsparsity: 0.5\nspartsity: 0.9\noutput_dir: x\n")
    with pytest.raises(ValueError, match="spartsity"):
        parse_recipe(str(bad))


def test_bad_command_line_key_is_named():
    with pytest.raises(ValueError, match="--no_such_key"):
        parse_recipe(str(DEFAULT_RECIPE), ["--no_such_key", "1"])


def test_cli_reports_errors_with_exit_code(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_scripts_train_forwards_to_the_cli():
    script = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--sparsity" in out.stdout and "--pretrain_steps" in out.stdout


def test_train_initialises_the_model_from_the_recipe_seed(tmp_path, monkeypatch):
    """Two `smart-hf train` runs of one recipe start from the same weights (the model is built before the Trainer
    seeds, so run_training must seed first); a different seed gives other weights."""

    class Stop(Exception):
        pass

    starts = []

    def capture(*args, model=None, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        raise Stop

    monkeypatch.setattr(run, "SmartTrainer", capture)
    for seed in (0, 0, 1):
        with pytest.raises(Stop):
            main(["train", "--config", str(DEFAULT_RECIPE), "--output_dir", str(tmp_path), "--seed", str(seed)])
    same = all(torch.equal(starts[0][k], starts[1][k]) for k in starts[0])
    assert same and not all(torch.equal(starts[0][k], starts[2][k]) for k in starts[0])


# --- your own data, end to end through `smart-hf train` -----------------------------------------------------------
# Tiny models built from a local config folder (--config_name), a few optimizer steps, files written by the test.

FAST = ["--max_steps", "4", "--search_steps", "2", "--per_device_train_batch_size", "8", "--report_to", "none"]
FAST += ["--use_cpu", "true", "--save_strategy", "no", "--log_hardening_jump", "false", "--block_shape", "4", "4"]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """`datasets` indexes image folders and csv files in its cache: keep that inside the test's folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))


@pytest.fixture(scope="module")
def digit_images():
    """Real handwritten digits 0, 1 and 2 (scikit-learn), 12 each, as 8x8 grayscale PNGs."""
    pixels, labels = load_digits(return_X_y=True)
    return [(pixels[labels == d][:12].reshape(-1, 8, 8) * 15).astype(np.uint8) for d in range(3)]


def _write_images(digit_images, root, names=("zero", "one", "two"), splits=None):
    """``root/<class>/<i>.png``, or ``root/<split>/<class>/<i>.png`` with image ranges per split."""
    for split, index in (splits or {"": slice(None)}).items():
        for name, images in zip(names, digit_images):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images[index]):
                Image.fromarray(image).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_image_config(tmp_path):
    """A config folder only (no weights, no image processor): smart-hf train builds the model from scratch."""
    folder = tmp_path / "tiny_deit"
    DeiTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8, patch_size=4
    ).save_pretrained(folder)
    return folder


def _train(args, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", *args, "--output_dir", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return out, json.loads((out / "smart_summary.json").read_text()), captured


def _check_artifact(out, class_names, model_class):
    model = model_class.from_pretrained(out)  # stock transformers loads the pruned folder
    assert list(model.config.id2label.values()) == class_names
    report = sparsity_report(model)
    assert report["valid"] and abs(report["total"]["sparsity"] - 0.5) < 1e-6


def test_train_on_an_image_folder_without_splits(tmp_path, capsys, caplog, tiny_image_config, digit_images):
    images = _write_images(digit_images, tmp_path / "images")
    with caplog.at_level(logging.INFO, logger="smart_hf"):
        out, summary, _ = _train(
            ["--config_name", str(tiny_image_config), "--dataset", "imagefolder", "--data_dir", str(images)],
            tmp_path,
            capsys,
        )
    # 36 images: 4 held out as test, then 4 as validation (10% each, stratified), and the log says so
    assert "no test split; held out 4 of the 36 training examples as test" in caplog.text
    assert "no validation split; held out 4 of the 32 training examples as validation" in caplog.text
    assert summary["pruned"]["test_accuracy"] in {0.0, 0.25, 0.5, 0.75, 1.0}  # scored on the 4 test images
    _check_artifact(out, ["one", "two", "zero"], AutoModelForImageClassification)


def test_train_on_an_image_folder_with_splits_and_a_labels_column(tmp_path, capsys, tiny_image_config, digit_images):
    """train/validation/test sub-folders, each with a metadata.csv whose class column is called `labels`."""
    splits = {"train": slice(0, 8), "validation": slice(8, 10), "test": slice(10, 12)}
    root = _write_images(digit_images, tmp_path / "images", splits=splits)
    for split in splits:  # move the images out of their class folders; metadata.csv names the class instead
        rows = []
        for class_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir()):
                image.rename(root / split / f"{class_dir.name}_{image.name}")
                rows.append((f"{class_dir.name}_{image.name}", class_dir.name))
            class_dir.rmdir()
        with open(root / split / "metadata.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("file_name", "labels"), *rows])
    out, summary, _ = _train(
        ["--config_name", str(tiny_image_config), "--dataset", "imagefolder", "--data_dir", str(root)],
        tmp_path,
        capsys,
    )
    assert summary["pruned"]["test_accuracy"] in {i / 6 for i in range(7)}  # scored on the 6 given test images
    _check_artifact(out, ["one", "two", "zero"], AutoModelForImageClassification)


def test_without_matplotlib_a_run_completes_without_plots_and_one_warning(
    tmp_path, capsys, caplog, monkeypatch, tiny_image_config, digit_images
):
    """matplotlib only draws the plots: its absence is found before training, said once with the install command,
    and the run still writes its model, card and summary."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # unimportable, and find_spec finds nothing
    images = _write_images(digit_images, tmp_path / "images")
    with caplog.at_level(logging.WARNING, logger="smart_hf"):
        out, summary, _ = _train(
            ["--config_name", str(tiny_image_config), "--dataset", "imagefolder", "--data_dir", str(images)],
            tmp_path,
            capsys,
        )
    warnings = [r.getMessage() for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(warnings) == 1 and "pip install matplotlib" in warnings[0], warnings
    assert not list(out.glob("*.png"))
    assert (out / "README.md").is_file() and summary["pruned"]["test_accuracy"] is not None
    _check_artifact(out, ["one", "two", "zero"], AutoModelForImageClassification)


@pytest.fixture
def tiny_text_config(tmp_path):
    """A tiny BERT config folder with the real MiniLM tokenizer files in it."""
    folder = tmp_path / "tiny_bert"
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_train_on_text_files_with_named_columns(tmp_path, capsys, tiny_text_config, kind):
    """Real tweets in the user's own columns (`review`, `sentiment`, string labels); csv: only a train file (test and
    validation held out); json lines: train + validation files (test held out)."""
    texts, labels, _ = tweet_sentiment_corpus(binary=False)
    names = ["negative", "neutral", "positive"]
    by_class = [[t for t, y in zip(texts, labels) if y == c][:27] for c in range(3)]
    rows = [{"review": by_class[c][i], "sentiment": names[c]} for i in range(27) for c in range(3)]
    files = {"train": rows[:60], "validation": rows[60:80]} if kind == "json" else {"train": rows[:80]}
    args = ["--config_name", str(tiny_text_config), "--dataset", kind, "--max_length", "16"]
    args += ["--text_column", "review", "--label_column", "sentiment"]
    for split, split_rows in files.items():
        path = tmp_path / f"{split}.{'jsonl' if kind == 'json' else 'csv'}"
        with open(path, "w", newline="") as fh:
            if kind == "json":
                fh.writelines(json.dumps(row) + "\n" for row in split_rows)
            else:
                writer = csv.DictWriter(fh, ["review", "sentiment"])
                writer.writeheader()
                writer.writerows(split_rows)
        args += [f"--{split}_file", str(path)]
    out, summary, _ = _train(args, tmp_path, capsys)
    assert summary["pruned"]["test_accuracy"] is not None
    _check_artifact(out, ["negative", "neutral", "positive"], AutoModelForSequenceClassification)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "csv"], "needs train_file"),
        (["--train_file", "x.csv"], "add --dataset csv"),
        (["--dataset", "json", "--train_file", "x.csv"], "set dataset to 'csv'"),
        (["--val_fraction", "0.6", "--test_fraction", "0.5"], "sum to less than 1"),
    ],
)
def test_bad_data_arguments_exit_2_with_the_fix(args, message, capsys):
    assert main(["train", *args, "--output_dir", "unused"]) == 2
    assert message in capsys.readouterr().err


def test_a_unit_that_does_not_divide_the_layers_exits_2_without_a_traceback(tmp_path, capsys):
    """The message is the library's; the command line prints it alone (no traceback) and exits with 2."""
    overrides = '{"hidden_size": 18, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 36}'
    args = ["train", "--model_type", "vit", "--config_overrides", overrides, "--output_dir", str(tmp_path / "out")]
    assert main([*args, *FAST]) == 2  # returned, not raised: nothing for Python to print a traceback of
    err = capsys.readouterr().err
    assert "error: every selected module was skipped because the unit does not divide it" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "model.safetensors").exists()


def test_failed_offline_push_leaves_the_folder_as_it_was(tmp_path, capsys, monkeypatch):
    model = sh.prepare_model(tiny_vit(), sh.SmartConfig(sparsity=0.5))
    sh.harden(model)
    sh.save_pruned(model, tmp_path / "artifact", save_plots=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "artifact").iterdir()}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(tmp_path / "artifact"), "--repo-id", "me/tiny"]) == 2
    assert "unset HF_HUB_OFFLINE" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (tmp_path / "artifact").iterdir()} == before  # README.md untouched


def test_default_logging_fills_a_short_runs_plot(tmp_path):
    """Unset logging_steps logs about 50 times whatever the run's length (TrainingArguments: every 500 steps, so a
    100-step run had no loss curve); eval_strategy='steps' without eval_steps evaluates 10 times, not 50."""
    args = SmartTrainingArguments(
        output_dir=str(tmp_path), max_steps=100, per_device_train_batch_size=2, eval_strategy="steps",
        report_to="none", use_cpu=True, save_strategy="no", log_hardening_jump=False,
    )  # fmt: skip
    assert args.logging_steps == 0.02 and args.eval_steps == 0.1
    trainer = SmartTrainer(
        model=tiny_vit(), args=args, smart_config=sh.SmartConfig(sparsity=0.5),
        train_dataset=tiny_dataset(), eval_dataset=tiny_dataset(),
    )  # fmt: skip
    trainer.train()
    history = trainer.state.log_history
    assert len([e for e in history if "loss" in e]) == 50  # every ceil(0.02 * 100) = 2 steps
    assert len([e for e in history if "eval_loss" in e]) == 10


def test_hub_text_dataset_with_hidden_test_labels_holds_a_test_split_out_of_train(monkeypatch, caplog):
    """GLUE hides its test labels (-1): the test split is held out of train, validation stays GLUE's own."""
    texts = [f"sentence number {i}" for i in range(40)]
    glue = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"sentence": texts[:30], "label": [i % 2 for i in range(30)]}),
        validation=datasets.Dataset.from_dict({"sentence": texts[30:36], "label": [0, 1] * 3}),
        test=datasets.Dataset.from_dict({"sentence": texts[36:], "label": [-1] * 4}),
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None: glue)
    model_args, data_args, *_ = parse_recipe(
        None, ["--dataset", "glue", "--output_dir", "unused", "--test_fraction", "0.2"]
    )
    with caplog.at_level(logging.INFO, logger="smart_hf"):
        splits, names, _ = run.load_splits(data_args, model_args.__class__(tokenizer_name=minilm_path()), None)
    assert names == ["0", "1"] and {k: len(v) for k, v in splits.items()} == {"train": 24, "validation": 6, "test": 6}
    assert "test split of glue has no labels" in caplog.text
