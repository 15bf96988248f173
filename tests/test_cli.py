"""The recipe parser: every shipped recipe parses; bad keys fail with their names."""

from pathlib import Path

import pytest

from smart_hf.cli.main import main, parse_recipe

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))
DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "deit_digits_block.yaml"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    model_args, data_args, smart_config, training_args = parse_recipe(str(recipe))
    assert training_args.output_dir and smart_config.pattern in ("block", "channel", "nm")


def test_command_line_overrides_recipe():
    recipe = str(DEFAULT_RECIPE)
    *_, smart_config, training_args = parse_recipe(recipe, ["--sparsity", "0.75", "--max_steps", "7"])
    assert smart_config.sparsity == 0.75 and training_args.max_steps == 7


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
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--sparsity" in out.stdout and "--pretrain_steps" in out.stdout


def test_train_initialises_the_model_from_the_recipe_seed(tmp_path, monkeypatch):
    """Two `smart-hf train` runs of one recipe start from the same weights (the model is built before the Trainer
    seeds, so run_training must seed first); a different seed gives other weights."""
    import torch

    import smart_hf.cli.train as run

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
