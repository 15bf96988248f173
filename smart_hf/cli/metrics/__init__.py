"""Offline `evaluate` metrics shipped with smart_hf, and a `compute_metrics` factory for `transformers.Trainer`.

`evaluate>=0.4` no longer bundles metric scripts, so `evaluate.load("accuracy")` needs the Hugging Face Hub. The
metrics here live in `smart_hf/cli/metrics/<name>/<name>.py` and are loaded by path, which works offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["AVAILABLE_METRICS", "F1_AVERAGES", "load_metric", "make_compute_metrics"]

_METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("accuracy", "f1")
F1_AVERAGES = ("binary", "macro", "micro", "weighted")


def load_metric(name: str, **load_kwargs):
    """
    Load one of the metrics shipped with smart_hf, without Hub access.

    Args:
        name (`str`): One of `AVAILABLE_METRICS` (`"accuracy"`, `"f1"`).
        load_kwargs: Forwarded to `evaluate.load`. `keep_in_memory` defaults to `True`: on-disk caching only serves
            `evaluate`'s own multi-process mode, and its lock files make later loads of a metric whose `compute`
            raised wait a second each.

    Returns:
        `evaluate.EvaluationModule`: the metric, as `evaluate.load` returns it.

    Raises:
        `ValueError`: if `name` is not a shipped metric.
    """
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"Unknown metric {name!r}; smart_hf ships {list(AVAILABLE_METRICS)}.")
    import evaluate  # imported lazily: it pulls in `datasets`, which callers that only prune do not need

    load_kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(_METRICS_DIR / name), **load_kwargs)


def make_compute_metrics(
    metric_names: Sequence[str] = ("accuracy",), f1_average: str = "macro"
) -> Callable[..., dict[str, float]]:
    """
    Build a `compute_metrics` function for `transformers.Trainer` on single-label classification.

    Args:
        metric_names (`Sequence[str]`, defaults to `("accuracy",)`): Metrics to report, from `AVAILABLE_METRICS`.
        f1_average (`str`, defaults to `"macro"`): The `average` passed to the F1 metric (`"binary"`, `"macro"`,
            `"micro"` or `"weighted"`).

    Returns:
        `Callable`: maps an `EvalPrediction` (or a `(predictions, label_ids)` pair) to e.g.
        `{"accuracy": 0.91, "f1": 0.90}`. Predictions may be logits of shape `(batch, num_labels)` or a tuple whose
        first element is such logits (models that also return hidden states); they are arg-maxed over the last dim.
    """
    if f1_average not in F1_AVERAGES:
        raise ValueError(f"f1_average must be one of {F1_AVERAGES}, got {f1_average!r}.")
    # Load once here: `evaluate.load` copies the script and imports it, which is too slow to repeat every eval.
    metrics = {name: load_metric(name) for name in metric_names}
    kwargs = {"f1": {"average": f1_average}}

    def compute_metrics(eval_pred) -> dict[str, float]:
        """Arg-max the logits and compute every requested metric against the label ids."""
        predictions, labels = eval_pred[0], eval_pred[1]
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        predictions, labels = np.asarray(predictions), np.asarray(labels)
        # Logits carry one more dim than the labels; already-decoded class ids (same ndim) are used as they are.
        if predictions.ndim > labels.ndim:
            predictions = predictions.argmax(axis=-1)
        results = {}
        for name, metric in metrics.items():
            results.update(metric.compute(predictions=predictions, references=labels, **kwargs.get(name, {})))
        return results

    return compute_metrics
