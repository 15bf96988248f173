"""`SmartStages`: the three SMART stages for any training loop, in the spirit of torch.ao.pruning's
``prepare`` -> ``step`` -> ``squash_mask``.

A plain loop needs `prepare_model`, this driver and `save_pruned`::

    model = smart_hf.prepare_model(model, smart_hf.SmartConfig(pattern="nm"))
    optimizer = torch.optim.AdamW([*weight_groups, *smart_hf.score_parameter_groups(model)])
    stages = smart_hf.SmartStages(model, optimizer, total_steps=1000, pretrain_steps=100)
    for step in range(1000):
        stages.before_step(step)
        loss = model(**next(batches)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        stages.after_step(step)
    stages.finish()
    smart_hf.save_pruned(model, "pruned")

Per optimizer step (0-based), the stage of the step about to run:

1. ``step < pretrain``: dense mode (masks off);
2. ``pretrain <= step < pretrain + search``: on entry (when the model is still dense), the scores are re-initialised
   from the (pre-trained) weights (on ``calibration_data`` for ``score_init="activation"``) and soft masks turn on;
   every step advances the temperature and budget anneal (`update_temperature`);
3. afterwards: harden once (binary masks, frozen scores, pruned weights and their optimizer moments zeroed,
   `zero_pruned_optimizer_state`), and after every optimizer step (`after_step`) re-apply the hard mask so the pruned
   weights stay exactly zero.

`SmartCallback` (any ``transformers.Trainer``), `SmartTrainer`, the quality benchmark and
``examples/accelerate_loop.py`` all run the stages through this one class.

The scores need their own optimizer groups (`score_parameter_groups`: their own learning rate per kind of budget
group, no weight decay). An optimizer that misses them (built before `prepare_model`, or the scores left out) is a
ValueError here: they would never move. Scores that share a group with weights train with the weights' learning rate
and weight decay, which works but is not what the rates were chosen for: that is a ``UserWarning`` naming the fix,
not an error, because a stock ``transformers.Trainer`` with `SmartCallback` builds its optimizer that way.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .constants import CALIBRATED_SCORE_INITS
from .lifecycle import (
    apply_hard_masks_,
    get_smart_state,
    harden,
    reinit_scores,
    update_temperature,
    zero_pruned_optimizer_state,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EVENTS",
    "STAGES",
    "SmartStages",
    "check_optimizer_has_scores",
    "distillation_loss",
    "stage_at",
    "stage_lengths",
]

STAGES = ("pretrain", "search", "finetune")  # what `SmartStages.stage_at` returns
# "search_begins": the model is still dense (scores not yet re-initialised); "hardening": just before the masks are
# frozen (the soft masks still act); "hardened": binary masks frozen, optimizer moments of pruned weights zeroed
EVENTS = ("search_begins", "hardening", "hardened")


def stage_lengths(total_steps: int, pretrain_steps: int, search_steps: int | None, search_fraction: float):
    """``(pretrain, search, finetune)`` optimizer steps for a run of ``total_steps``.

    Args:
        total_steps: optimizer steps of the whole run.
        pretrain_steps: dense steps before the structure search.
        search_steps: steps of structure search; ``None``: ``round(search_fraction * (total_steps -
            pretrain_steps))``.
        search_fraction: share of the post-pretrain steps spent searching when ``search_steps`` is ``None``.

    Returns:
        ``(pretrain, search, finetune)``, summing to ``total_steps``.

    Raises:
        ValueError: no steps, no search step, or the stages do not fit in ``total_steps``.
    """
    if total_steps <= 0:
        raise ValueError("the run has no optimizer steps; the training dataset is empty or max_steps is 0.")
    search = search_steps if search_steps is not None else int(round(search_fraction * (total_steps - pretrain_steps)))
    if search < 1:
        raise ValueError(
            f"no structure-search steps: {total_steps} steps in total with pretrain_steps="
            f"{pretrain_steps}; raise max_steps/num_train_epochs or set search_steps."
        )
    if pretrain_steps + search > total_steps:
        raise ValueError(
            f"pretrain_steps ({pretrain_steps}) + search_steps ({search}) exceed the {total_steps} "
            "optimizer steps of the run; raise max_steps or shorten the stages."
        )
    return pretrain_steps, search, total_steps - pretrain_steps - search


def stage_at(step: int, stages: tuple[int, int, int]) -> str:
    """The stage of optimizer step ``step`` (0-based) under ``stages = (pretrain, search, finetune)``.

    Args:
        step: the optimizer step.
        stages: the stage lengths (`stage_lengths`).

    Returns:
        ``"pretrain"``, ``"search"`` or ``"finetune"`` (every step past the search, also past the run's end).
    """
    pretrain, search, _ = stages
    if step < pretrain:
        return "pretrain"
    return "search" if step < pretrain + search else "finetune"


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Knowledge-distillation loss (Hinton et al. 2015): ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    Computed in float32 over the last dimension; every leading position (batch, sequence) is one distribution, and
    the loss is the mean over those rows (``reduction="batchmean"`` of the flattened ``[rows, classes]``).

    Args:
        student_logits: ``[..., classes]`` logits of the model being trained (e.g. ``[batch, classes]`` or
            ``[batch, sequence, vocab]``).
        teacher_logits: the teacher's logits, same shape.
        temperature: softmax temperature ``T`` (> 0).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: the shapes differ or ``temperature`` is not > 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "distil from a teacher with the same output head."
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}; e.g. 2.0.")
    t = temperature
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(student.flatten(0, -2), teacher.flatten(0, -2), log_target=True, reduction="batchmean") * t * t


class SmartStages:
    """Runs the SMART stages of a prepared model around the optimizer steps of any training loop.

    Building it checks the model and the optimizer (see the module docstring), puts the model in dense mode when the
    run begins in the dense pre-train, and hardens nothing yet. Then call `before_step` before and `after_step` after
    every optimizer step, and `finish` after the last one.

    Args:
        model: a model prepared with `prepare_model` (DDP / accelerate wrappers are unwrapped).
        optimizer: the optimizer of the loop (an accelerate-wrapped one is unwrapped); its Adam-like moments of
            pruned weights are zeroed at hardening. ``None`` only where there is none (nothing is checked or
            zeroed).
        total_steps: optimizer steps of the whole run.
        pretrain_steps: dense steps before the structure search (0: the search starts at once, from the scores
            `prepare_model` initialised).
        search_steps: steps of structure search; ``None``: ``search_fraction`` of the steps after the pre-train.
        search_fraction: see ``search_steps``.
        calibration_data: input batches (dicts of model inputs) to re-initialise ``score_init="activation"`` scores
            on when the search begins after a dense pre-train.
        start_step: the first optimizer step this loop runs (> 0 when resuming from a checkpoint).

    Attributes:
        stages: ``(pretrain, search, finetune)`` optimizer steps.
        fractionality_at_hardening: the soft masks' fractionality just before hardening, after the
            ``"hardening"`` listeners (``None`` until then).

    Raises:
        ValueError: the stages do not fit; the scores are frozen while the search is still to come; the optimizer
            misses trainable scores; ``score_init="activation"`` with a search beginning from the dense mode and no
            ``calibration_data``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        total_steps: int,
        pretrain_steps: int = 0,
        search_steps: int | None = None,
        search_fraction: float = 0.4,
        calibration_data=None,
        start_step: int = 0,
    ):
        self.model, self.optimizer, self.calibration_data = model, optimizer, calibration_data
        self.stages = stage_lengths(total_steps, pretrain_steps, search_steps, search_fraction)
        self.fractionality_at_hardening: float | None = None
        self._listeners: dict[str, list[Callable]] = {event: [] for event in EVENTS}
        smart = get_smart_state(model)
        if smart.is_hard:  # resumed in the fine-tune stage
            for layer in smart.layers:
                layer.smart_scores.requires_grad_(False)
            return
        _check_scores_trainable(smart)
        if start_step < self.stages[0]:
            smart.set_mode("dense")
        _check_calibration(smart, calibration_data)
        check_optimizer_has_scores(model, optimizer)

    def add_listener(self, event: str, listener: Callable[[SmartStages], None]) -> None:
        """Call ``listener(self)`` at ``event``, after the listeners added before it.

        Args:
            event: ``"search_begins"`` (the model is still dense: evaluate it or snapshot a teacher here),
                ``"hardening"`` (just before the masks are frozen) or ``"hardened"`` (masks frozen, moments zeroed).
            listener: a callable taking this driver.

        Raises:
            ValueError: an unknown event.
        """
        if event not in self._listeners:
            raise ValueError(f"event must be one of {EVENTS}, got {event!r}.")
        self._listeners[event].append(listener)

    def stage_at(self, step: int) -> str:
        """``"pretrain"``, ``"search"`` or ``"finetune"``: the stage of optimizer step ``step`` (0-based).

        Args:
            step: the optimizer step.

        Returns:
            The stage name (one of ``STAGES``).
        """
        return stage_at(step, self.stages)

    def before_step(self, step: int) -> None:
        """Before optimizer step ``step``: begin the search on entering it, advance the temperature every search
        step, harden on the first step after it.

        Args:
            step: the optimizer step about to run (0-based).
        """
        smart = get_smart_state(self.model)
        stage = self.stage_at(step)
        if stage == "pretrain" or (stage == "search" and smart.is_hard):
            return  # a model hardened before the driver keeps its fixed mask
        if stage == "search":
            if smart.mode_name == "dense":
                self._begin_search()
            update_temperature(self.model, step - self.stages[0], self.stages[1])
        elif not smart.is_hard:
            self._harden()

    def after_step(self, step: int) -> None:
        """After optimizer step ``step``: once hardened, set the pruned weights back to exactly zero.

        Args:
            step: the optimizer step that just ran (0-based).
        """
        if get_smart_state(self.model).is_hard:
            apply_hard_masks_(self.model)

    def finish(self) -> None:
        """After the last optimizer step: harden if the run ended before the fine-tune stage (listeners included)."""
        if not get_smart_state(self.model).is_hard:
            self._harden()

    def _notify(self, event: str) -> None:
        for listener in self._listeners[event]:
            listener(self)

    def _begin_search(self) -> None:
        self._notify("search_begins")
        reinit_scores(self.model, self.calibration_data)
        get_smart_state(self.model).set_mode("soft")
        logger.info("smart_hf: structure search begins")

    def _harden(self) -> None:
        self._notify("hardening")
        self.fractionality_at_hardening = get_smart_state(self.model).fractionality()
        harden(self.model)
        zero_pruned_optimizer_state(self.model, self.optimizer)
        self._notify("hardened")


def check_optimizer_has_scores(model: nn.Module, optimizer) -> None:
    """Check that ``optimizer`` trains every trainable SMART score of ``model``, in groups of their own.

    Optimizers that are not ``torch.optim.Optimizer`` after unwrapping accelerate's wrapper (DeepSpeed's, whose
    groups hold flattened copies) are not checked.

    Args:
        model: a prepared model.
        optimizer: the loop's optimizer, or ``None`` (nothing checked).

    Raises:
        ValueError: a trainable score is in no parameter group (it would never move).

    Warns:
        UserWarning: a group holds scores and weights together (the scores then train with the weights' learning
            rate and weight decay).
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(inner, torch.optim.Optimizer):
        return
    scores = {id(layer.smart_scores) for layer in get_smart_state(model).layers if layer.smart_scores.requires_grad}
    in_groups = [{id(p) for p in group["params"]} for group in inner.param_groups]
    if scores - set().union(*in_groups):
        raise ValueError(
            "the optimizer misses the SMART mask scores, so the structure search would never move them: build it "
            "after smart_hf.prepare_model(model, ...) and add the scores' groups, e.g. "
            "torch.optim.AdamW(weight_groups + smart_hf.score_parameter_groups(model))."
        )
    if any(group & scores and group - scores for group in in_groups):
        warnings.warn(
            "the SMART mask scores share an optimizer parameter group with weights, so they train with the weights' "
            "learning rate and weight decay; give them their own groups with smart_hf.score_parameter_groups(model) "
            "(SmartTrainer does this itself).",
            UserWarning,
            stacklevel=3,
        )


def _check_scores_trainable(smart) -> None:
    if not all(layer.smart_scores.requires_grad for layer in smart.layers):
        raise ValueError(
            "the SMART mask scores are frozen (requires_grad=False), so the structure search cannot learn; "
            "PEFT's get_peft_model (also what SFTTrainer(peft_config=...) calls) freezes every parameter but the "
            "adapters. Add LoRA with smart_hf.integrations.peft.get_peft_model(model, lora_config), which keeps "
            "the scores trainable, and pass that model to the Trainer (or smart_hf.harden(model) first to train "
            "adapters on fixed masks)."
        )


def _check_calibration(smart, calibration_data) -> None:
    """Activation-aware and Fisher scores are re-initialised on calibration batches when the search begins (after
    the dense stage): without batches that would fail only then, after the dense steps were paid for. Fail now."""
    begins_search = smart.mode_name == "dense"
    init = smart.smart_config.score_init
    if begins_search and init in CALIBRATED_SCORE_INITS and calibration_data is None:
        raise ValueError(
            f"score_init={init!r} re-initialises the mask scores on calibration batches when the structure "
            "search begins, and none were given: pass SmartCallback(calibration_data=[batch, ...]) in a Trainer, "
            "SmartStages(..., calibration_data=[batch, ...]) in a plain loop (a few training batches of model "
            "inputs), or use score_init='magnitude'."
        )
