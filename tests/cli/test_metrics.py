"""The shipped accuracy/F1 metrics against scikit-learn, and the Trainer `compute_metrics` factory."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction

from smart_hf.cli.metrics import AVAILABLE_METRICS, load_metric, make_compute_metrics

METRICS_DIR = Path(__file__).resolve().parents[2] / "smart_hf" / "cli" / "metrics"


@pytest.fixture(scope="module")
def accuracy():
    return load_metric("accuracy")


@pytest.fixture(scope="module")
def f1():
    return load_metric("f1")


def random_labels(seed: int, num_classes: int, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, n), rng.integers(0, num_classes, n), rng.uniform(0.1, 2.0, n)


@pytest.mark.parametrize("seed", range(3))
def test_accuracy_matches_sklearn(accuracy, seed):
    predictions, references, weights = random_labels(seed, num_classes=4)
    result = accuracy.compute(predictions=predictions, references=references)
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    weighted = accuracy.compute(predictions=predictions, references=references, sample_weight=weights)
    assert weighted["accuracy"] == pytest.approx(accuracy_score(references, predictions, sample_weight=weights))
    count = accuracy.compute(predictions=predictions, references=references, normalize=False)
    assert count["accuracy"] == pytest.approx(accuracy_score(references, predictions, normalize=False))


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
@pytest.mark.parametrize("seed", range(3))
def test_multiclass_f1_matches_sklearn(f1, average, seed):
    predictions, references, weights = random_labels(seed, num_classes=5)
    result = f1.compute(predictions=predictions, references=references, average=average)
    assert result["f1"] == pytest.approx(f1_score(references, predictions, average=average))
    weighted = f1.compute(predictions=predictions, references=references, average=average, sample_weight=weights)
    expected = f1_score(references, predictions, average=average, sample_weight=weights)
    assert weighted["f1"] == pytest.approx(expected)


@pytest.mark.parametrize("pos_label", [0, 1])
@pytest.mark.parametrize("seed", range(3))
def test_binary_f1_matches_sklearn(f1, pos_label, seed):
    predictions, references, weights = random_labels(seed, num_classes=2)
    result = f1.compute(predictions=predictions, references=references, pos_label=pos_label)
    assert result["f1"] == pytest.approx(f1_score(references, predictions, pos_label=pos_label))
    weighted = f1.compute(predictions=predictions, references=references, pos_label=pos_label, sample_weight=weights)
    expected = f1_score(references, predictions, pos_label=pos_label, sample_weight=weights)
    assert weighted["f1"] == pytest.approx(expected)


@pytest.mark.parametrize("average", ["binary", "macro", "micro", "weighted"])
def test_f1_classes_never_predicted_count_as_zero(f1, average):
    # Class 0 is never predicted and class 2 never occurs: scikit-learn's zero_division=0 convention.
    references, predictions = np.array([0, 1, 1, 1, 0, 1]), np.array([1, 1, 1, 1, 1, 1])
    if average != "binary":
        references, predictions = np.append(references, 1), np.append(predictions, 2)
    result = f1.compute(predictions=predictions, references=references, average=average)
    assert result["f1"] == pytest.approx(f1_score(references, predictions, average=average, zero_division=0))


def test_f1_rejects_bad_arguments(f1):
    with pytest.raises(ValueError, match="average='binary' needs at most 2"):
        f1.compute(predictions=[0, 1, 2], references=[0, 1, 2])
    with pytest.raises(ValueError, match="average must be one of"):
        f1.compute(predictions=[0, 1], references=[0, 1], average="samples")
    with pytest.raises(ValueError, match="pos_label=1 is not one of"):
        f1.compute(predictions=[0, 2], references=[2, 0])


@pytest.mark.parametrize("name", AVAILABLE_METRICS)
def test_metric_scripts_import_only_numpy_datasets_evaluate(name):
    # The scripts are copied into the `evaluate` modules cache and must not need scikit-learn at runtime.
    tree = ast.parse((METRICS_DIR / name / f"{name}.py").read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "datasets", "evaluate", "numpy"}


def test_load_metric_unknown_name_lists_available():
    with pytest.raises(ValueError, match="accuracy.*f1"):
        load_metric("bleu")


def test_make_compute_metrics_with_tuple_predictions():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(64, 3)), rng.integers(0, 3, 64)
    hidden_states = rng.normal(size=(64, 7, 4))
    compute_metrics = make_compute_metrics(("accuracy", "f1"), f1_average="weighted")
    result = compute_metrics(EvalPrediction(predictions=(logits, hidden_states), label_ids=labels))
    predicted = logits.argmax(-1)
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted, average="weighted"))
    # Plain logits, a (predictions, labels) pair and already-decoded class ids give the same numbers.
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == result
    assert compute_metrics((logits, labels)) == result
    assert compute_metrics((predicted, labels)) == result


def test_make_compute_metrics_rejects_bad_arguments():
    with pytest.raises(ValueError, match="f1_average must be one of"):
        make_compute_metrics(("f1",), f1_average="samples")
    with pytest.raises(ValueError, match="Unknown metric"):
        make_compute_metrics(("precision",))
