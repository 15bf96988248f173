"""What ``smart-hf train`` runs: build data and model from the parsed arguments, train with SMART, summarise."""

from __future__ import annotations

import copy
import json
import logging
import os
from collections import Counter

from datasets import ClassLabel
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainerCallback,
    ViTImageProcessorPil,
    set_seed,
)

from ..report import sparsity_report
from ..training.trainer import SmartTrainer
from . import data as smart_data
from .data import tokenize_splits
from .errors import quiet_skipped_modules
from .metrics import make_compute_metrics
from .slim_table import coupled_artifact_rows, format_artifact_rows
from .splits import TEXT_COLUMNS, complete_splits, encode_labels, find_label_column, pick_column

logger = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"  # what save_pretrained of an image processor writes

IMAGE_DATASETS = {"digits", "imagefolder"}
TEXT_FILE_DATASETS = {"csv", "json"}


def _model_path(model_args) -> str | None:
    path = model_args.model_name_or_path
    if path == "builtin:minilm-l6":
        return smart_data.minilm_path()
    return path


def model_config(model_args, model_path: str | None):
    """The model's config before the labels are known: pretrained, a config folder / id, or a model type."""
    overrides = json.loads(model_args.config_overrides) if model_args.config_overrides else {}
    source = model_path or model_args.config_name
    if source:
        config = AutoConfig.from_pretrained(source, **overrides)
    elif model_args.model_type is None:
        raise ValueError(
            "set model_name_or_path (pretrained), or config_name (a config folder) or model_type to train from scratch."
        )
    else:
        config = AutoConfig.for_model(model_args.model_type, **overrides)
    if config.architectures is None:  # transformers 5 iterates it when a type maps to several head classes
        config.architectures = []
    return config


def _processor_source(model_args, model_path: str | None) -> str | None:
    return model_args.tokenizer_name or model_path or model_args.config_name


def _image_processor(source: str | None, config):
    """The model's image processor, or (none saved with it) a plain resize + normalise to the config's image size."""
    config_only = source and os.path.isdir(source) and not os.path.isfile(os.path.join(source, PROCESSOR_FILE))
    if config_only:  # checked first: transformers < 5.2x cannot even try AutoImageProcessor without torchvision
        logger.warning("smart_hf: no image processor in %s (no %s); using a plain one.", source, PROCESSOR_FILE)
    elif source:
        try:
            return AutoImageProcessor.from_pretrained(source)
        except ImportError as err:
            raise ValueError(
                f"the image processor of {source} needs torchvision with this transformers version; install "
                "torchvision (pip install torchvision) or a newer transformers, whose PIL image processors need none."
            ) from err
        except (OSError, ValueError) as err:  # no preprocessor_config.json on the Hub either
            logger.warning("smart_hf: no image processor in %s (%s); using a plain one.", source, type(err).__name__)
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = getattr(config, "num_channels", 3)
    logger.info("smart_hf: image processor: resize to %dx%d, %d channel(s), mean/std 0.5", height, width, channels)
    return ViTImageProcessorPil(
        size={"height": height, "width": width}, image_mean=[0.5] * channels, image_std=[0.5] * channels
    )


def load_splits(data_args, model_args, config):
    """``(DatasetDict with train/validation/test, class names, processing_class)``."""
    name, model_path = data_args.dataset, _model_path(model_args)
    holdout = {"val_fraction": data_args.val_fraction, "test_fraction": data_args.test_fraction}
    if name == "digits":
        ds = smart_data.load_digits_splits(image_size=data_args.image_size, num_channels=data_args.num_channels)
        return ds, ds["train"].features["labels"].names, None
    source = _processor_source(model_args, model_path)
    if name == "imagefolder":
        if data_args.data_dir is None:
            raise ValueError("dataset='imagefolder' needs data_dir (a folder with one sub-folder per class).")
        processor = _image_processor(source, config)
        mode = "L" if getattr(config, "num_channels", 3) == 1 else "RGB"
        ds = smart_data.load_image_folder(
            data_args.data_dir, processor, label_column=data_args.label_column, image_mode=mode,
            seed=data_args.split_seed, **holdout,
        )  # fmt: skip
        return ds, ds["train"].features[_label_feature(ds["train"])].names, processor
    if source is None:
        raise ValueError(
            f"dataset={name!r} is text: set model_name_or_path (or tokenizer_name) so a tokenizer can be loaded."
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    if name == "tweet_sentiment":
        ds = smart_data.load_tweet_sentiment(
            tokenizer,
            max_length=data_args.max_length,
            train_size=data_args.train_size,
            val_size=data_args.val_size,
            test_size=data_args.test_size,
        )
        return ds, ds["train"].features["labels"].names, tokenizer
    if name in TEXT_FILE_DATASETS:
        ds, names = smart_data.load_text_files(
            tokenizer, data_args.train_file, data_args.validation_file, data_args.test_file,
            text_column=data_args.text_column, label_column=data_args.label_column,
            max_length=data_args.max_length, seed=data_args.split_seed, **holdout,
        )  # fmt: skip
        return ds, names, tokenizer
    return _hub_text_splits(data_args, tokenizer)


def majority_class_share(split) -> float | None:
    """Share of the most common label in ``split`` (the accuracy of always predicting it); None without labels.
    Reads the Arrow column, so an image split's transform is not run."""
    names = [name for name in ("labels", "label") if name in split.column_names]
    if not names:
        try:
            names = [_label_feature(split)]
        except StopIteration:
            return None
    values = split.data.column(names[0]).to_pylist()
    return max(Counter(values).values()) / len(values) if values else None


def _label_feature(dataset) -> str:
    """The `ClassLabel` column the image-folder loader kept (its transform renames it ``labels`` on access)."""
    return next(name for name, feature in dataset.features.items() if isinstance(feature, ClassLabel))


def _hub_text_splits(data_args, tokenizer):
    from datasets import load_dataset

    raw = load_dataset(data_args.dataset, data_args.dataset_config)
    text = pick_column(raw["train"].column_names, data_args.text_column, TEXT_COLUMNS, "text", "text_column")
    label = find_label_column(raw["train"], data_args.label_column)
    if "test" in raw and min(raw["test"][label]) < 0:
        # GLUE-style hidden test labels (-1): hold a labelled test split out of train instead
        logger.info(
            "smart_hf: the test split of %s has no labels (-1); a test split is held out of train instead.",
            data_args.dataset,
        )
        del raw["test"]
    raw = complete_splits(
        encode_labels(raw, label), label, data_args.val_fraction, data_args.test_fraction, data_args.split_seed
    )
    names = raw["train"].features[label].names
    return tokenize_splits(raw, tokenizer, text, label, data_args.max_length), names, tokenizer


def check_splits_not_empty(ds, dataset_name: str) -> None:
    """Fail before any model is built when a split has no examples (the Trainer's sampler would fail later with
    ``num_samples=0``, which does not say which split or why)."""
    for split in ("train", "validation", "test"):
        if len(ds[split]) == 0:
            raise ValueError(
                f"the {split} split of dataset {dataset_name!r} is empty; check data_dir (one sub-folder of images per "
                "class), the dataset name, or raise train_size / val_size / test_size."
            )


def build_model(model_args, dataset: str, config, label_names, model_path: str | None):
    """The classifier: ``config`` with one output per class name, pretrained weights when ``model_path`` is set."""
    auto = AutoModelForImageClassification if dataset in IMAGE_DATASETS else AutoModelForSequenceClassification
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    if model_path:
        return auto.from_pretrained(model_path, config=config, ignore_mismatched_sizes=True)
    return auto.from_config(config)


def _check_columns_kept(data_args, training_args) -> None:
    """An image folder's transform reads the raw ``image`` / label columns, which the Trainer would drop."""
    if data_args.dataset == "imagefolder" and training_args.remove_unused_columns:
        logger.info("smart_hf: dataset='imagefolder' keeps the raw image columns: remove_unused_columns=False.")
        training_args.remove_unused_columns = False


class DenseTestOnce(TrainerCallback):
    """Evaluate the dense model on the test split once, after its last dense step (the test split is not part of the
    evaluations during training, which read validation only); its metrics are ``dense_test_*``.

    Args:
        trainer: the `SmartTrainer` (its stage lengths are known once training begins).
        test_dataset: the test split.
    """

    def __init__(self, trainer, test_dataset):
        self.trainer, self.test_dataset = trainer, test_dataset
        self.metrics: dict = {}
        self.step: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if self.step is None and state.global_step == self.trainer.smart_callback.stages[0]:
            self.step = state.global_step
            self.metrics = self.trainer.evaluate(self.test_dataset, metric_key_prefix="dense_test")


def run_training(model_args, data_args, smart_config, training_args, command: list[str] | None = None) -> dict:
    """Train, evaluate dense (after its last dense step) and pruned, save the pruned model; return the summary.

    During training only the validation split is evaluated; the test split is read once per model: the dense model
    after the dense stage, the pruned model at the end.

    Args:
        model_args, data_args, smart_config, training_args: the four parsed dataclasses (`parse_recipe`).
        command: the command line that reproduces the run, shown in the model card (token values redacted).

    Returns:
        The summary (also written to ``<output_dir>/smart_summary.json``): accuracies, parameters and the steps each
        model trained, per row ``dense`` / ``pruned``; ``artifact`` rows for coupled units.

    Raises:
        ValueError: bad data or a model the pattern does not fit (the message names the fix).
    """
    model_path = _model_path(model_args)
    config = model_config(model_args, model_path)
    ds, label_names, processing_class = load_splits(data_args, model_args, config)
    check_splits_not_empty(ds, data_args.dataset)
    _check_columns_kept(data_args, training_args)
    set_seed(training_args.seed)  # the Trainer seeds only after the model exists: seed its initialisation too
    model = build_model(model_args, data_args.dataset, config, label_names, model_path)
    dense_config = copy.deepcopy(model.config)  # training, squash and slim edit the model's own config
    dense_params = sum(p.numel() for p in model.parameters())
    trainer = _smart_trainer(model, smart_config, training_args, ds, processing_class, command)
    dense_test = DenseTestOnce(trainer, ds["test"])
    trainer.add_callback(dense_test)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    pruned = {**trainer.evaluate(), **trainer.evaluate(ds["test"], metric_key_prefix="test")}
    trainer.save_model()  # after the test evaluation: the model card shows it
    summary = _summary(trainer, dense_test, pruned, dense_params)
    summary["test_majority_share"] = majority_class_share(ds["test"])  # what a collapsed model would score
    if smart_config.pattern == "coupled" and training_args.should_save:  # what a user came for: smaller, faster
        summary["artifact"] = coupled_artifact_rows(
            trainer.model,
            lambda: build_model(model_args, data_args.dataset, dense_config, label_names, model_path),
            training_args.output_dir,
            ds["test"],
            training_args.per_device_eval_batch_size,
            smart_config.budget,
            training_args.output_dir,
        )
        # the report counts the owners' zeros only; a coupled unit also zeroes its producer rows and BN entries
        summary["pruned"]["nonzero_parameters"] = summary["artifact"]["pruned"]["nonzero_parameters"]
    if training_args.should_save:
        with open(os.path.join(training_args.output_dir, "smart_summary.json"), "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    print(format_summary(summary))
    return summary


def _smart_trainer(model, smart_config, training_args, ds, processing_class, command) -> SmartTrainer:
    """The run's `SmartTrainer`: trains on ``ds["train"]``, evaluates on ``ds["validation"]`` (accuracy)."""
    with quiet_skipped_modules():
        return SmartTrainer(
            model=model,
            args=training_args,
            smart_config=smart_config,
            train_dataset=ds["train"],
            eval_dataset={"validation": ds["validation"]},
            processing_class=processing_class,
            compute_metrics=make_compute_metrics(("accuracy",)),
            reproduce_command=command,
        )


def _summary(trainer, dense_test: DenseTestOnce, pruned: dict, dense_params: int) -> dict:
    report = sparsity_report(trainer.model)
    dense = trainer.dense_metrics or {}
    return {
        "dense": {
            "validation_accuracy": dense.get("dense_validation_accuracy"),
            "test_accuracy": dense_test.metrics.get("dense_test_accuracy"),
            # pretrain_steps=0: the dense row is the model before any step (its test split is not read)
            "steps": dense_test.step if dense_test.step is not None else (0 if dense else None),
            "parameters": dense_params,
            "nonzero_parameters": dense_params,
        },
        "pruned": {
            "validation_accuracy": pruned.get("eval_validation_accuracy"),
            "test_accuracy": pruned.get("test_accuracy"),
            "steps": trainer.state.global_step,
            "parameters": dense_params,
            "nonzero_parameters": dense_params - report["total"]["zeros"],
        },
        "targeted_sparsity": report["total"]["sparsity"],
        "pattern_valid": report["valid"],
    }


def format_summary(summary: dict) -> str:
    """The final table of ``smart-hf train``: accuracy, steps trained and parameters of the dense and pruned models
    (and, for coupled units, parameters, file size and latency of the artifacts).

    Each model row names the optimizer steps it trained: the dense row is the model after the dense stage, so a run
    with fine-tuning compares models of different training lengths, and the table says so.

    Args:
        summary: what `run_training` returns.

    Returns:
        The table as text.
    """

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    lines = ["", "SMART summary", f"{'':<10}{'val acc':>10}{'test acc':>10}{'steps':>8}{'params':>12}{'non-zero':>12}"]
    for name in ("dense", "pruned"):
        row = summary[name]
        steps = "n/a" if row.get("steps") is None else str(row["steps"])
        lines.append(
            f"{name:<10}{pct(row['validation_accuracy']):>10}{pct(row['test_accuracy']):>10}{steps:>8}"
            f"{row['parameters']:>12,}{row['nonzero_parameters']:>12,}"
        )
    dense_steps, pruned_steps = summary["dense"].get("steps"), summary["pruned"].get("steps")
    if dense_steps is not None and pruned_steps is not None and pruned_steps != dense_steps:
        lines.append(
            f"the dense row is the model after its {dense_steps} dense steps, the pruned one trained "
            f"{pruned_steps - dense_steps} steps more: not a comparison at equal training (benchmarks/quality makes "
            "that one)"
        )
    lines.append(
        f"sparsity of the targeted weights: {summary['targeted_sparsity']:.4f} "
        f"(pattern valid: {summary['pattern_valid']})"
    )
    if summary.get("test_majority_share") is not None:  # the floor a collapsed model sits on
        lines.append(f"always predicting the most common class: {pct(summary['test_majority_share'])} test accuracy")
    if summary.get("artifact"):
        lines += format_artifact_rows(summary["artifact"])
    return "\n".join(lines)
