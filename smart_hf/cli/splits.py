"""Splits of a user's own data for ``smart-hf train``: label columns, and splits it lacks.

- `find_label_column` / `encode_labels`: the label column is ``label`` or ``labels`` (or named explicitly); string or
  integer labels become a `ClassLabel` of the training split's distinct labels (``1..3`` become classes 0..2).
- `complete_splits`: a missing ``test`` / ``validation`` split is held out of ``train``, stratified and deterministic
  for a seed, and the log says so.
- `stratified_split`: disjoint index sets that keep the class proportions.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np

from ..demo_data import stratified_split

logger = logging.getLogger(__name__)

__all__ = [
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "complete_splits",
    "encode_labels",
    "find_label_column",
    "pick_column",
    "stratified_split",
]

LABEL_COLUMNS = ("label", "labels")
TEXT_COLUMNS = ("text", "sentence")


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], kind: str, arg: str) -> str:
    """``wanted`` if it is a column, else the first of ``candidates`` present; a ValueError naming the fix."""
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{kind} column {wanted!r} is not in the data (columns: {columns}); set --{arg}.")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"no {kind} column named {' or '.join(map(repr, candidates))} (columns: {columns}); set --{arg}.")


def find_label_column(dataset: datasets.Dataset, label_column: str | None = None) -> str:
    """The label column of ``dataset``: ``label_column`` if given, else ``label`` or ``labels``."""
    return pick_column(dataset.column_names, label_column, LABEL_COLUMNS, "label", "label_column")


def encode_labels(splits: datasets.DatasetDict, column: str) -> datasets.DatasetDict:
    """Make ``column`` a `ClassLabel` in every split.

    Already a `ClassLabel`: unchanged. Otherwise the classes are the training split's distinct labels, sorted (numbers
    by value, strings alphabetically), and class ``i`` is the ``i``-th of them: integer labels ``1..3`` become
    classes 0..2 named ``"1".."3"`` (so ``id2label`` in the model's config records the mapping; the log says when ids
    change), never a head with a class that does not occur. A label of another split that ``train`` lacks is an error
    (the classifier would have no output for it).

    Args:
        splits: the splits; ``train`` defines the classes.
        column: the label column.

    Returns:
        The splits with ``column`` holding class ids ``0..K-1`` as a `ClassLabel` named by the original labels.

    Raises:
        ValueError: rows without a label, labels that are neither integers nor strings, a label ``train`` lacks, or a
            single class.
    """
    feature = splits["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return splits
    dtype = getattr(feature, "dtype", None)
    if dtype is None or not (dtype.startswith("int") or dtype in ("string", "large_string")):
        raise ValueError(f"label column {column!r} holds {feature}; labels must be integers or strings.")
    values = {name: split.unique(column) for name, split in splits.items()}
    for name, found in values.items():
        if None in found:
            raise ValueError(f"the {name} split has rows without a {column!r}; drop or label them.")
    classes = sorted(values["train"])
    for name, found in values.items():
        unseen = sorted(set(found) - set(classes))
        if unseen:
            raise ValueError(f"the {name} split has label(s) {unseen[:5]} that train lacks; fix the labels.")
    if len(classes) < 2:
        raise ValueError(
            f"the labels in column {column!r} have a single class {classes}; a classifier needs two or more."
        )
    if classes != list(range(len(classes))):  # strings, or integers other than 0..K-1
        index = {label: i for i, label in enumerate(classes)}
        if dtype.startswith("int"):
            logger.info(
                "smart_hf: the integer labels %s of column %r are classes 0..%d (id2label in the model config keeps "
                "the mapping).", classes[:10], column, len(classes) - 1,
            )  # fmt: skip
        splits = splits.map(
            lambda labels: {column: [index[label] for label in labels]}, input_columns=[column], batched=True
        )
    return splits.cast_column(column, datasets.ClassLabel(names=[str(label) for label in classes]))


def _hold_out(train: datasets.Dataset, column: str, n: int, seed: int, split: str):
    """``(rest, held_out)``: ``n`` examples of ``train`` drawn stratified by ``column`` with ``seed``."""
    held, rest = stratified_split(np.asarray(train[column]), [n, len(train) - n], seed)
    logger.info(
        "smart_hf: the data has no %s split; held out %d of the %d training examples as %s (stratified, seed %d).",
        split, n, len(train), split, seed,
    )  # fmt: skip
    return train.select(np.sort(rest)), train.select(np.sort(held))


def complete_splits(
    splits: datasets.DatasetDict, column: str, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> datasets.DatasetDict:
    """``train``, ``validation`` and ``test``: a missing split is held out of ``train`` (test first, then validation;
    ``round(fraction * len(train))`` examples each), stratified by the labels in ``column``, and the log says so.

    ``test_fraction=0`` makes no test split (one already there is kept). Other splits are dropped; data without a
    ``train`` split is an error, and so is a held-out split that would be empty or leave ``train`` empty.
    """
    if "train" not in splits:
        raise ValueError(f"the data has no train split (splits: {list(splits)}); name the training split 'train'.")
    train = splits["train"]
    wanted = {"test": test_fraction, "validation": val_fraction}
    sizes = {
        name: round(fraction * len(train))
        for name, fraction in wanted.items()
        if name not in splits and not (name == "test" and fraction == 0)
    }
    if sizes and (min(sizes.values()) < 1 or sum(sizes.values()) >= len(train)):
        fractions = ", ".join(f"{'val' if name == 'validation' else name}_fraction={wanted[name]}" for name in sizes)
        raise ValueError(
            f"the data has no {' or '.join(sizes)} split, and {fractions} of its {len(train)} training examples "
            "leaves a split empty; add the split(s) to the data, use more examples, or change the fraction(s)."
        )
    out = {name: splits[name] for name in ("validation", "test") if name in splits}
    for name, n in sizes.items():
        train, out[name] = _hold_out(train, column, n, seed, name)
    return datasets.DatasetDict(
        {"train": train, **{name: out[name] for name in ("validation", "test") if name in out}}
    )
