"""The CLI's dataset loaders: a local image folder and a user's text files (tokenised with the real MiniLM
tokenizer); the label and split handling of a user's data. The offline demo data: tests/test_demo_data.py."""

from __future__ import annotations

import csv
import json
import logging

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, ViTImageProcessorPil

from smart_hf.cli.data import load_image_folder, load_text_files
from smart_hf.cli.splits import complete_splits, encode_labels
from smart_hf.demo_data import minilm_path, tweet_sentiment_corpus

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


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
    texts = tweet_sentiment_corpus(binary=False)[0][:40]
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
