"""The README runs as written: its python snippets execute, and the files and recipes it names exist.

The snippets import only the public API and `smart_hf.demo_data` (a user has no other way to reach the demo data).

The ```python blocks run in order in one namespace (a later snippet may use a name an earlier one defined, as a
reader would) inside a temporary folder. A block runs unless `SKIPPED` lists it with the reason. The default suite
runs the snippets at smoke size (`SMOKE` rewrites their step counts, and each rewrite must match the README);
the `slow` test runs every block exactly as written.
"""

import re
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageClassification

import smart_hf as sh
from smart_hf.cli.commands import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# A distinctive piece of a block's code -> why the test does not run that block.
SKIPPED: dict[str, str] = {}
# Smoke size of the 30-second example in the default suite: the README text -> what runs instead.
SMOKE = {
    "max_steps=900, pretrain_steps=300, search_steps=300": "max_steps=12, pretrain_steps=4, search_steps=4",
    "max_steps=300, learning_rate=3e-3": "max_steps=8, learning_rate=3e-3",
    "SmartCallback(pretrain_steps=0, search_steps=120)": "SmartCallback(pretrain_steps=0, search_steps=4)",
}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of every ```python fenced block of a markdown text."""
    blocks = []
    for match in re.finditer(r"^```python[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


def _skip_reason(code: str) -> str | None:
    return next((reason for key, reason in SKIPPED.items() if key in code), None)


def _run_blocks(tmp_path, monkeypatch, smoke: bool) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    previous = torch.get_num_threads()
    try:
        for line, code in python_blocks(README.read_text(encoding="utf-8")):
            if _skip_reason(code):
                continue
            if smoke:
                for written, small in SMOKE.items():
                    code = code.replace(written, small)
            exec(compile(code, f"README.md:{line}", "exec"), namespace)  # noqa: S102 -- the README's own code
    finally:
        torch.set_num_threads(previous)
    return namespace


def test_every_block_is_run_or_skipped_with_a_reason():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    for key in SKIPPED:  # a stale entry (the block changed or left) would silently skip nothing
        assert sum(key in code for _, code in blocks) == 1, key
    for written in SMOKE:
        assert sum(written in code for _, code in blocks) == 1, f"SMOKE no longer matches the README: {written}"


def test_readme_python_runs(tmp_path, monkeypatch):
    _run_blocks(tmp_path, monkeypatch, smoke=True)
    _check_artifacts(tmp_path)


@pytest.mark.slow
def test_readme_python_runs_as_written(tmp_path, monkeypatch):
    _run_blocks(tmp_path, monkeypatch, smoke=False)
    _check_artifacts(tmp_path)


def _check_artifacts(tmp_path):
    """Both paths the README shows end in a folder stock transformers loads, with a valid pattern."""
    folders = sorted(p.parent for p in tmp_path.glob("**/smart_sparsity.json"))
    assert len(folders) >= 2, folders  # SmartTrainer.save_model and the callback's artifact
    for folder in folders:
        assert sh.check_sparsity(str(folder))["verified"], folder
        model, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"], (folder, info)


def test_snippets_use_only_the_public_api():
    """No snippet reaches into the command line's internals or a private name."""
    for line, code in python_blocks(README.read_text(encoding="utf-8")):
        assert not re.search(r"\bsmart_hf\.cli\b|\bsmart_hf(\.\w+)*\._", code), f"README.md:{line}"


def test_one_import_line():
    """The names users look for at the top level, as PEFT and TRL have them."""
    from smart_hf import SmartCallback, SmartConfig, SmartTrainer, SmartTrainingArguments  # noqa: F401


PATH = re.compile(r"(?<![\w/.-])((?:recipes|scripts|examples|benchmarks|docs|tests)/[\w./-]*\w)")


def test_paths_the_readme_names_exist():
    missing = sorted({p for p in PATH.findall(README.read_text(encoding="utf-8")) if not (ROOT / p).exists()})
    assert not missing, f"README.md names paths that do not exist: {missing}"


def train_commands(text: str) -> list[list[str]]:
    """The arguments after ``smart-hf train`` of every such command in the README's bash blocks (comments dropped,
    continuation lines joined, a ``[--key value ...]`` placeholder and what follows it dropped)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            starts = [i for i, w in enumerate(words[:-1]) if w.endswith("smart-hf") and words[i + 1] == "train"]
            if starts:
                args = words[starts[0] + 2 :]
                commands.append(args[: next((i for i, w in enumerate(args) if w.startswith("[")), len(args))])
    return commands


def test_readme_train_commands_parse():
    """Every key a command of the README or the guide passes exists, and the recipes it names parse with it."""
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    commands = [c for page in pages for c in train_commands(page.read_text(encoding="utf-8")) if "--help" not in c]
    assert len(commands) >= 3
    for args in commands:
        recipe = None
        if "--config" in args:
            i = args.index("--config")
            recipe, args = str(ROOT / args[i + 1]), args[:i] + args[i + 2 :]
        parse_recipe(recipe, args)
