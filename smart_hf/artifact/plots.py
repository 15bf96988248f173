"""PNG plots of a SMART run: per-layer sparsity, and temperature / fractionality / loss through the stages.

matplotlib is optional (``pip install matplotlib``, the ``[plots]`` extra); without it the plots are skipped with a
warning (``smart-hf train`` checks for it before training and warns once).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["save_plots"]


def save_plots(report: dict, log_history: list[dict], output_dir: str, stages=None) -> list[str]:
    """Write ``smart_layer_sparsity.png`` and, when there is a log history, ``smart_training.png``.

    Args:
        report: the `sparsity_report` of the model (its ``layers`` and ``total``).
        log_history: the Trainer's log history (loss, temperature, fractionality, sparsity per step).
        output_dir: the folder the PNGs go to (it exists).
        stages: the stage lengths ``(pretrain, search, finetune)`` the training plot marks, or ``None``.

    Returns:
        The paths written; empty when matplotlib is not installed (a warning says so).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "smart_hf: matplotlib is not installed; skipping plots (pip install matplotlib: the [plots] extra)."
        )
        return []
    paths = [_layer_sparsity(plt, report, os.path.join(output_dir, "smart_layer_sparsity.png"))]
    if log_history:
        paths.append(_training_curves(plt, log_history, stages, os.path.join(output_dir, "smart_training.png")))
    return paths


def _short_names(names: list[str]) -> list[str]:
    """Layer names without the dotted prefix they all share (``deit.layers.0.mlp.fc1`` -> ``0.mlp.fc1``)."""
    parts = [name.split(".") for name in names]
    shared = 0
    while len(names) > 1 and all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
    return [".".join(p[shared:]) for p in parts]


def _layer_sparsity(plt, report: dict, path: str) -> str:
    # Horizontal bars: one row per layer, so every name is printed in full however many layers there are.
    rows = report["layers"]
    names = _short_names([r["name"] for r in rows])
    fig, ax = plt.subplots(figsize=(7, 1.4 + 0.16 * len(rows)))
    ax.barh(range(len(rows)), [r["sparsity"] for r in rows], color="tab:blue")
    ax.axvline(report["total"]["sparsity"], color="tab:red", ls="--", label=f"total {report['total']['sparsity']:.3f}")
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()  # first layer on top, in model order
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("sparsity")
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Per-layer sparsity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _training_curves(plt, log_history: list[dict], stages, path: str) -> str:
    keys = [
        ("smart/temperature", "temperature", True),
        ("smart/fractionality", "mask fractionality", False),
        ("loss", "loss", False),
    ]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 7), sharex=True)
    for ax, (key, label, log_scale) in zip(axes, keys):
        points = [(e["step"], e[key]) for e in log_history if key in e and not _eval_key(e)]
        if points:
            ax.plot(*zip(*points), label="train loss" if key == "loss" else label)
        if key == "loss":
            evals = [(e["step"], e[_eval_key(e)]) for e in log_history if _eval_key(e)]
            if evals:
                ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
        if log_scale and points and min(v for _, v in points) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        _shade_stages(ax, stages)
        if ax.get_legend_handles_labels()[0]:  # a quantity the run did not log gets an empty panel, no legend
            ax.legend(fontsize=7)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle("SMART: dense pre-train (grey) | structure search (green) | fine-tune")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _eval_key(entry: dict) -> str | None:
    """The eval-loss key of a log entry: ``eval_loss``, or ``eval_validation_loss`` for a dict of eval sets."""
    for key in ("eval_loss", "eval_validation_loss"):
        if key in entry:
            return key
    return None


def _shade_stages(ax, stages) -> None:
    if not stages:
        return
    pretrain, search, _ = stages
    if pretrain:
        ax.axvspan(0, pretrain, color="grey", alpha=0.12)
    ax.axvspan(pretrain, pretrain + search, color="tab:green", alpha=0.08)
