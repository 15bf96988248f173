"""F1 score as a local `evaluate` metric.

`evaluate>=0.4` no longer bundles metric scripts, so `evaluate.load("f1")` needs the Hub. This file is the offline
replacement: `evaluate.load("path/to/smart_hf/metrics/f1")`. It only needs numpy and follows scikit-learn's
`f1_score` conventions (labels are the union of predictions and references; an undefined F1 counts as 0).
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_AVERAGES = ("binary", "macro", "micro", "weighted")

_DESCRIPTION = """\
The F1 score is the harmonic mean of precision and recall: F1 = 2 * TP / (2 * TP + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): Ground-truth class ids.
    average (`str`, defaults to `"binary"`): One of
        - `"binary"`: F1 of the class `pos_label` only; needs at most two distinct labels.
        - `"micro"`: F1 of the pooled TP/FP/FN counts over all classes (equals accuracy for single-label data).
        - `"macro"`: unweighted mean of the per-class F1 scores.
        - `"weighted"`: mean of the per-class F1 scores weighted by their support in `references`.
    pos_label (`int`, defaults to 1): The positive class for `average="binary"`.
    sample_weight (`list[float]`, *optional*): Per-sample weights.

Returns:
    `dict`: `{"f1": float}` in [0, 1].

Example:
    >>> f1 = evaluate.load("smart_hf/metrics/f1")
    >>> f1.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'f1': 0.6666666666666666}
"""

_CITATION = """\
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # scikit-learn's zero_division default: a class with no TP, FP or FN gets F1 = 0 instead of nan.
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """Binary, micro, macro or support-weighted F1, numpy only."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self, predictions, references, average: str = "binary", pos_label: int = 1, sample_weight=None
    ) -> dict[str, float]:
        if average not in _AVERAGES:
            raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}.")
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape.")
        weights = np.ones(len(references)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != references.shape:
            raise ValueError(f"sample_weight has shape {weights.shape}, expected {references.shape}.")

        # Classes are the union of predicted and true labels, as in scikit-learn; `inverse` maps samples to them.
        labels, inverse = np.unique(np.concatenate([predictions, references]), return_inverse=True)
        if average == "binary" and len(labels) > 2:
            raise ValueError(
                f"average='binary' needs at most 2 distinct labels, got {labels.tolist()}; "
                "use average='macro', 'micro' or 'weighted' for multi-class data."
            )
        if average == "binary" and len(labels) == 2 and pos_label not in labels:
            raise ValueError(
                f"pos_label={pos_label!r} is not one of the labels {labels.tolist()}; pass the right one."
            )
        predicted_class, true_class = inverse[: len(predictions)], inverse[len(predictions) :]
        hit = predictions == references
        tp = np.bincount(true_class[hit], weights=weights[hit], minlength=len(labels))
        predicted = np.bincount(predicted_class, weights=weights, minlength=len(labels))
        support = np.bincount(true_class, weights=weights, minlength=len(labels))
        # 2 TP + FP + FN = (TP + FP) + (TP + FN) = predicted + support.
        per_class = _safe_divide(2 * tp, predicted + support)

        if average == "binary":
            # A positive class that never occurs has F1 = 0 (nothing to find, nothing found correctly).
            return {"f1": float(per_class[labels == pos_label].sum())}
        if average == "micro":
            pooled = predicted.sum() + support.sum()
            return {"f1": float(2 * tp.sum() / pooled) if pooled > 0 else 0.0}
        if average == "macro":
            return {"f1": float(per_class.mean()) if len(labels) else 0.0}
        total = support.sum()
        return {"f1": float(np.sum(per_class * support) / total) if total > 0 else 0.0}
