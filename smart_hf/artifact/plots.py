"""PNG plots of a SMART run: per-layer sparsity, and temperature / fractionality / loss through the stages.

matplotlib is optional (``pip install smart-hf[plots]``); without it the plots are skipped with a warning.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

__all__ = ["save_plots"]


def save_plots(report: dict, log_history: list[dict], output_dir: str, stages=None) -> list[str]:
    """Write ``smart_layer_sparsity.png`` and, when there is a log history, ``smart_training.png``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("smart_hf: matplotlib is not installed; skipping plots (pip install matplotlib).")
        return []
    paths = [_layer_sparsity(plt, report, os.path.join(output_dir, "smart_layer_sparsity.png"))]
    if log_history:
        paths.append(_training_curves(plt, log_history, stages, os.path.join(output_dir, "smart_training.png")))
    return paths


def _layer_sparsity(plt, report: dict, path: str) -> str:
    rows = report["layers"]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["sparsity"] for r in rows], color="tab:blue")
    ax.axhline(report["total"]["sparsity"], color="tab:red", ls="--", label=f"total {report['total']['sparsity']:.3f}")
    ax.set_xticks(range(len(rows)), [r["name"][-28:] for r in rows], rotation=90, fontsize=6)
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Per-layer sparsity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _training_curves(plt, log_history: list[dict], stages, path: str) -> str:
    keys = [
        ("smart/temperature", "temperature", True),
        ("smart/fractionality", "mask fractionality", False),
        ("loss", "train loss", False),
    ]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 7), sharex=True)
    for ax, (key, label, log_scale) in zip(axes, keys):
        points = [(e["step"], e[key]) for e in log_history if key in e and not _eval_key(e)]
        if key == "loss":
            evals = [(e["step"], e[_eval_key(e)]) for e in log_history if _eval_key(e)]
            if evals:
                ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
        if points:
            ax.plot(*zip(*points), label=label)
        if log_scale and points and min(v for _, v in points) > 0:
            ax.set_yscale("log")
        ax.set_ylabel(label)
        _shade_stages(ax, stages)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle("SMART: dense pre-train | structure search | fine-tune")
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
