"""Classification accuracy as a local `evaluate` metric.

`evaluate>=0.4` no longer bundles metric scripts, so `evaluate.load("accuracy")` needs the Hub. This file is the
offline replacement: `evaluate.load("path/to/smart_hf/metrics/accuracy")`. It only needs numpy.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy is the proportion of correct predictions: (TP + TN) / (TP + TN + FP + FN) for binary labels, or
mean(prediction == reference) in general.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): Predicted class ids.
    references (`list[int]`): Ground-truth class ids.
    normalize (`bool`, defaults to `True`): Return the fraction of correct predictions; with `False` return their
        (weighted) count.
    sample_weight (`list[float]`, *optional*): Per-sample weights.

Returns:
    `dict`: `{"accuracy": float}`, in [0, 1] when `normalize=True`.

Example:
    >>> accuracy = evaluate.load("smart_hf/metrics/accuracy")
    >>> accuracy.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    {'accuracy': 0.75}
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Fraction (or count) of predictions equal to the references, numpy only."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict[str, float]:
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape.")
        weights = np.ones(len(references)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if weights.shape != references.shape:
            raise ValueError(f"sample_weight has shape {weights.shape}, expected {references.shape}.")
        correct = float(np.sum(weights * (predictions == references)))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        # An empty (or zero-weight) evaluation has no defined accuracy; report 0 rather than nan so logs stay numeric.
        return {"accuracy": correct / total if total > 0 else 0.0}
