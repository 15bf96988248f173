"""``smart-hf train --help``: the options grouped by what they set, one line each.

The full parser has ~300 options, most of them `transformers.TrainingArguments` fields a recipe rarely sets; the
short help lists the CLI's, SMART's and the common training options, and ``--help-all`` prints the full parser's.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap

from transformers import TrainingArguments

from ..config import SmartConfig
from ..training.training_args import SmartTrainingArguments
from .arguments import DataArguments, ModelArguments, make_parser, recipe_names

__all__ = ["COMMON_TRAINING_OPTIONS", "train_help"]

COMMON_TRAINING_OPTIONS = (
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "seed",
    "use_cpu",
    "bf16",
    "report_to",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
)

WIDTH = 119


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = re.search(r"\.\s+(?=[A-Z])", text)  # "e.g. 'deit'" does not end a sentence
    return text if end is None else text[: end.start() + 1]


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return ""
    value = getattr(value, "value", value)  # enums show their value
    return "" if value is None or value == "" or value == [] else f" (default: {value})"


def _lines(fields: list[dataclasses.Field]) -> list[str]:
    lines = []
    for field in fields:
        text = _first_sentence(field.metadata.get("help", "")) + _default(field)
        head = f"  --{field.name:<30} "
        body = textwrap.wrap(text, WIDTH - len(head)) or [""]
        lines += [head + body[0], *(" " * len(head) + line for line in body[1:])]
    return lines


def train_help(full: bool = False) -> str:
    """The help of ``smart-hf train``.

    Args:
        full: every option of the parser (argparse's help), instead of the grouped short one.

    Returns:
        The text to print.
    """
    if full:
        return make_parser().format_help()
    own = {f.name for f in dataclasses.fields(TrainingArguments)}
    smart_training = [f for f in dataclasses.fields(SmartTrainingArguments) if f.init and f.name not in own]
    smart_training += [f for f in dataclasses.fields(SmartTrainingArguments) if f.name in COMMON_TRAINING_OPTIONS]
    groups = [
        ("model", [f for f in dataclasses.fields(ModelArguments) if f.init]),
        ("data", [f for f in dataclasses.fields(DataArguments) if f.init]),
        ("SMART (SmartConfig)", [f for f in dataclasses.fields(SmartConfig) if f.init]),
        ("training (SmartTrainingArguments: the SMART fields and the common ones)", smart_training),
    ]
    intro = (
        "Train with SMART from a recipe: a YAML file of key: value, or a shipped recipe's name "
        f"({', '.join(recipe_names())}). Every key below can be set in the recipe or overridden as --key value. "
        "When --max_steps is overridden, the recipe's stage lengths (pretrain_steps, search_steps, ...) scale with it."
    )
    lines = ["usage: smart-hf train --config RECIPE [--key value ...]", "", *textwrap.wrap(intro, WIDTH), ""]
    for title, group in groups:
        lines += [f"{title}:", *_lines(group), ""]
    lines.append(
        "Any other transformers TrainingArguments field is accepted too (e.g. --fp16, --torch_compile); "
        "`smart-hf train --help-all` lists every option."
    )
    return "\n".join(lines)
