"""Collapse detection: one-class predictions after the model once worked stop the run, naming fixes."""

import pytest
import torch
from tiny_models import tiny_bert
from transformers.modeling_outputs import SequenceClassifierOutput

from smart_hf import SmartConfig, prepare_model
from smart_hf.training.callbacks import SmartCallback
from smart_hf.training.collapse import CollapseMonitor, SearchCollapsedError


class _FakeClassifier(torch.nn.Module):
    """Predicts the class given in ``predict`` (one per example), ignoring the input."""

    def forward(self, predict, labels=None):
        logits = torch.nn.functional.one_hot(predict, 2).float()
        return SequenceClassifierOutput(loss=torch.tensor(0.5), logits=logits)


def _feed(model, preds, labels, batch=16):
    for start in range(0, len(preds), batch):
        model(torch.tensor(preds[start : start + batch]), labels=torch.tensor(labels[start : start + batch]))


def test_collapse_needs_one_class_predictions_after_a_healthy_window():
    model, monitor = _FakeClassifier().train(), CollapseMonitor(window=64)
    monitor.attach(model)
    labels = [0, 1] * 32
    _feed(model, [0] * 64, labels)  # one class from the start: never worked, so not a collapse
    assert monitor.status()["top_share"] == 1.0 and not monitor.status()["collapsed"]
    _feed(model, labels, labels)  # learns
    assert not monitor.status()["collapsed"]
    _feed(model, [0] * 64, labels)  # and collapses
    status = monitor.status()
    assert status["collapsed"] and status["label_share"] == 0.5
    monitor.detach()
    _feed(model, labels, labels)  # detached: the window no longer moves
    assert monitor.status()["collapsed"]


def test_a_dense_stage_stuck_on_one_class_does_not_make_the_search_a_collapse():
    model, monitor = _FakeClassifier().train(), CollapseMonitor(window=64)
    monitor.attach(model)
    labels = [0, 1] * 32
    _feed(model, labels, labels)  # a random head predicts both classes ...
    assert not monitor.status()["collapsed"]
    _feed(model, [0] * 64, labels)  # ... then the dense stage settles on the majority class
    monitor.status()
    monitor.start_search()
    _feed(model, [0] * 64, labels)
    assert not monitor.status()["collapsed"]  # the search did not break a model that worked
    _feed(model, labels, labels)
    monitor.status()
    _feed(model, [0] * 64, labels)
    assert monitor.status()["collapsed"]  # once it works in the search, falling to one class is a collapse


def test_one_class_data_is_not_a_collapse_and_eval_forwards_are_ignored():
    model, monitor = _FakeClassifier().train(), CollapseMonitor(window=64)
    monitor.attach(model)
    _feed(model, [0, 1] * 32, [0, 1] * 32)
    assert not monitor.status()["collapsed"]
    _feed(model, [0] * 64, [0] * 61 + [1] * 3)  # 95% of the labels are class 0: predicting 0 is not a collapse
    assert not monitor.status()["collapsed"]
    model.eval()
    _feed(model, [1] * 64, [0, 1] * 32)  # evaluation forwards do not count
    assert monitor.status()["top_share"] == 1.0 and monitor.status()["label_share"] > 0.9


def test_callback_raises_in_the_search_but_not_in_the_dense_stage():
    model = prepare_model(tiny_bert(), SmartConfig(pattern="nm"))
    callback = SmartCallback(pretrain_steps=5, search_steps=5)
    callback.stages = (5, 5, 10)
    callback.collapse_monitor = monitor = CollapseMonitor(window=32)
    monitor.healthy_seen = True
    monitor.preds.extend([1] * 32)
    monitor.labels.extend([0, 1] * 16)
    callback._check_collapse(3)  # dense stage: not the search's fault, nothing raised
    with pytest.raises(SearchCollapsedError, match="tau_start_fractionality"):
        callback._check_collapse(7)
    callback.collapse_action = "warn"
    callback._check_collapse(8)  # logs, then forgets the window
    assert len(monitor.preds) == 0
    with pytest.raises(ValueError, match="collapse_action"):
        SmartCallback(collapse_action="stop")
    assert model is not None
