"""Collapse detection while pruning: a classifier that starts predicting one class for (almost) every input.

A pruning search that destroys a pretrained network does not crash: its loss rises a little and the model settles on
the majority class (MiniLM 2:4 on the tweets: 70% accuracy = the share of negative tweets). `CollapseMonitor` watches
the training forwards (a forward hook reads ``logits`` and the ``labels`` keyword of sequence-classification models)
and keeps the last ``window`` predictions and labels. The model has **collapsed** when

* the most predicted class takes at least ``one_class_share`` of the window's predictions,
* that class is at most ``max_label_share`` of the window's labels (so the data itself is not one class), and
* an earlier full window was *not* one-class (a from-scratch model that has not learned anything yet has not
  collapsed: it never worked).

It also tracks the mean training loss per window; a window whose mean loss is ``loss_ratio`` times the lowest seen
is logged as a warning only (high sparsity legitimately multiplies the loss of a from-scratch model).
Models without 2-D ``logits`` and 1-D integer ``labels`` (language models, token classification) are not checked.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["CollapseMonitor", "SearchCollapsedError", "react_to_collapse"]


class SearchCollapsedError(RuntimeError):
    """The pruned model predicts one class for (almost) every training input."""


class CollapseMonitor:
    """Sliding-window statistics of a classifier's training predictions (see the module docstring)."""

    def __init__(
        self, window: int = 256, one_class_share: float = 0.98, max_label_share: float = 0.9, loss_ratio: float = 4.0
    ):
        if window < 1 or not 0.5 < one_class_share <= 1.0 or not 0.0 < max_label_share < one_class_share:
            raise ValueError(
                "CollapseMonitor needs window >= 1 and 0 < max_label_share < one_class_share in (0.5, 1]; "
                f"got {window}, {max_label_share}, {one_class_share}."
            )
        self.window, self.one_class_share = window, one_class_share
        self.max_label_share, self.loss_ratio = max_label_share, loss_ratio
        self.preds: deque = deque(maxlen=window)
        self.labels: deque = deque(maxlen=window)
        self.losses: deque = deque(maxlen=max(1, window // 16))
        self.healthy_seen = False
        self.last_healthy = False  # the verdict of the last full window: not one-class
        self.best_loss = math.inf
        self.handle = None

    def attach(self, model: nn.Module) -> None:
        """Register the forward hook on ``model`` (once)."""
        if self.handle is None:
            self.handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    @torch.no_grad()
    def _hook(self, module, _args, kwargs, output) -> None:
        if not module.training:
            return
        loss = getattr(output, "loss", None)
        if torch.is_tensor(loss) and loss.numel() == 1:
            self.losses.append(loss.detach().float())
        logits, labels = getattr(output, "logits", None), kwargs.get("labels")
        if not (torch.is_tensor(logits) and torch.is_tensor(labels)) or logits.ndim != 2 or labels.ndim != 1:
            return
        if labels.dtype.is_floating_point or logits.shape[0] != labels.shape[0]:
            return
        self.preds.extend(logits.argmax(-1).tolist())
        self.labels.extend(labels.tolist())

    def status(self) -> dict:
        """``top_share`` (share of the most predicted class), ``label_share`` (that class among the labels),
        ``loss`` (mean of the recent losses) and ``collapsed``; the window must be full for shares to count."""
        out = {"top_share": math.nan, "label_share": math.nan, "loss": math.nan, "collapsed": False}
        if self.losses:
            out["loss"] = float(torch.stack(list(self.losses)).mean())
        if len(self.preds) < self.window:
            return out
        preds = torch.tensor(list(self.preds))
        labels = torch.tensor(list(self.labels))
        top = int(torch.mode(preds).values)
        out["top_share"] = float((preds == top).float().mean())
        out["label_share"] = float((labels == top).float().mean())
        one_class = out["top_share"] >= self.one_class_share and out["label_share"] <= self.max_label_share
        out["collapsed"] = one_class and self.healthy_seen
        self.healthy_seen |= not one_class
        self.last_healthy = not one_class
        return out

    def start_search(self) -> None:
        """The search begins: forget the dense stage's predictions, and count as "once worked" only a dense model
        whose last full window was not one-class (a dense stage that never left the majority class is not a
        collapse of the search)."""
        self.healthy_seen = self.last_healthy
        self.reset_window()

    def loss_jumped(self, loss: float) -> bool:
        """Whether ``loss`` is ``loss_ratio`` times the lowest windowed loss seen so far (and remember it)."""
        if not math.isfinite(loss):
            return False
        jumped = loss > self.loss_ratio * self.best_loss
        if len(self.losses) == self.losses.maxlen:
            self.best_loss = min(self.best_loss, loss)
        return jumped

    def reset_window(self) -> None:
        """Forget the window (after a reaction, so the next verdict is about the new state)."""
        self.preds.clear()
        self.labels.clear()


def react_to_collapse(
    monitor: CollapseMonitor, step: int, dense_stage: bool, action: str, warned_step: int, extra_logs: dict
) -> int:
    """After optimizer step ``step``: update the window's verdict and react to it (what `SmartCallback` does).

    A full window's top-class share goes to ``extra_logs["smart/top_class_share"]``. In the dense stage a loss jump
    only records the reference; later a jump is logged (at most once per window) and a collapse is logged and, with
    ``action="raise"``, raised.

    Args:
        monitor: the attached `CollapseMonitor`.
        step: the optimizer step just done.
        dense_stage: whether that step was in the dense pre-train (not the search's fault).
        action: ``"raise"`` or ``"warn"``.
        warned_step: the step of the last loss-jump warning (``-1``: none).
        extra_logs: the metrics to add to the next log, updated in place.

    Returns:
        The step of the last loss-jump warning.

    Raises:
        SearchCollapsedError: a collapse with ``action="raise"``.
    """
    status = monitor.status()
    if status["top_share"] == status["top_share"]:  # not NaN: the window is full
        extra_logs["smart/top_class_share"] = status["top_share"]
    jumped = monitor.loss_jumped(status["loss"])  # in the dense stage this only records the reference
    if dense_stage:
        return warned_step
    if jumped and step - warned_step >= monitor.window:
        warned_step = step
        logger.warning(
            "smart_hf: training loss %.4f is over %.0fx the lowest seen (%.4f) at step %d; watch for a collapse.",
            status["loss"],
            monitor.loss_ratio,
            monitor.best_loss,
            step,
        )
    if not status["collapsed"]:
        return warned_step
    message = (
        f"smart_hf: the pruned model predicts one class for {status['top_share']:.0%} of the last "
        f"{monitor.window} training examples (that class is {status['label_share']:.0%} of their labels) at step "
        f"{step}: the structure search collapsed. Fixes: keep tau_start='auto' and lower tau_start_fractionality "
        "(e.g. 0.02), keep budget_anneal > 0 (e.g. 2/3, the default), lower score_learning_rate, or fine-tune "
        "dense first (pretrain_steps); collapse_action='warn' only logs this."
    )
    if action == "raise":
        raise SearchCollapsedError(message)
    logger.warning(message)
    monitor.reset_window()
    return warned_step
