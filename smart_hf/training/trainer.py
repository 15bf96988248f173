"""`SmartTrainer`: a `transformers.Trainer` that runs the three SMART stages in one ``train()``.

Swap ``Trainer`` for ``SmartTrainer``, pass ``smart_config=SmartConfig(...)`` and `SmartTrainingArguments`; the
stages, temperature schedule, hardening and mask enforcement run from `SmartCallback` (its stage driver
`smart_hf.SmartStages`), and what needs the Trainer is added as listeners of that driver: dense metrics and the
distillation teacher at the start of the search, the eval-loss jump at hardening. Documented Trainer methods are overridden:
``create_optimizer`` (own parameter groups for the mask scores), ``compute_loss`` (optional distillation),
``train``, ``save_model`` and ``push_to_hub`` (the saves, checkpoint or artifact, are `SmartSaves`'s in
``saves.py``).
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
import re

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..config import SmartConfig
from ..constants import CALIBRATED_SCORE_INITS, SCORES_NAME
from ..inject import prepare_model
from ..lifecycle import get_smart_state, is_prepared, score_parameter_groups, set_mode
from ..stages import SmartStages, distillation_loss
from .callbacks import SmartCallback
from .saves import SmartSaves
from .training_args import SmartTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["SmartTrainer"]

_CHECKPOINT_DIR = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")  # the stock Trainer's checkpoint folder names


class SmartTrainer(SmartSaves, Trainer):
    """Trainer for SMART pruning.

    Args:
        model: a transformers model (prepared here unless it already is).
        args (`SmartTrainingArguments`): training and stage settings.
        smart_config (`SmartConfig`): what to prune; required unless ``model`` is already prepared.
        teacher_model: optional distillation teacher (default: the dense model at the start of the search, used
            when ``args.distill_alpha > 0``).
        calibration_data: input batches for ``score_init="activation"`` / ``"fisher"``; default: the first batches.
        reproduce_command: the command line that reproduces this run, shown in the model card (``smart-hf train``
            passes its own; values of ``--*token*`` options are redacted).
        **kwargs: everything `Trainer` accepts (datasets, collator, ``compute_metrics``, callbacks, ...).

    Raises:
        ValueError: no ``model``, ``args`` that are not `SmartTrainingArguments`, an empty ``train_dataset``, or an
            unprepared model without ``smart_config``.
    """

    def __init__(
        self,
        model=None,
        args: SmartTrainingArguments | None = None,
        smart_config: SmartConfig | None = None,
        teacher_model=None,
        calibration_data=None,
        reproduce_command: list[str] | None = None,
        **kwargs,
    ):
        args = _checked_inputs(model, args, smart_config, kwargs.get("train_dataset"))
        prepared = is_prepared(model)
        super().__init__(model=model, args=args, **kwargs)
        # activation-aware scores calibrate on the first training batches unless given; also for a model prepared
        # beforehand, whose scores are re-initialised on them when the search begins (after the dense stage)
        config = get_smart_state(self.model).smart_config if prepared else smart_config
        if calibration_data is None and config.score_init in CALIBRATED_SCORE_INITS:
            calibration_data = self._calibration_batches(config)
        if not prepared:
            prepare_model(self.model, smart_config, calibration_data=calibration_data)
            if args.pretrain_steps > 0:
                set_mode(self.model, "dense")
        self.teacher_model = teacher_model
        self.reproduce_command = reproduce_command
        self.dense_metrics: dict | None = None  # eval metrics of the dense model at the start of the search
        # SmartTrainer.save_model writes the artifact, and the model keeps its SMART state after train()
        self.smart_callback = SmartCallback(calibration_data=calibration_data, save_pruned_to=None, squash_at_end=False)
        self.smart_callback.add_listener("search_begins", self._on_search_begins)
        self.smart_callback.add_listener("hardening", self._on_hardening)
        self.smart_callback.add_listener("hardened", self._on_hardened)
        self._eval_loss_before_hardening: float | None = None
        # first in the list, so the smart metrics it adds to `logs` reach every report_to backend
        self.callback_handler.callbacks.insert(0, self.smart_callback)
        if args.push_to_hub and str(getattr(args.hub_strategy, "value", args.hub_strategy)) != "end":
            logger.warning(
                "smart_hf: hub_strategy=%r pushes raw training checkpoints (soft masks, mask scores) while training; "
                "the pruned artifact is pushed by push_to_hub()/save_model(). Set hub_strategy='end' to push only it.",
                getattr(args.hub_strategy, "value", args.hub_strategy),
            )

    def _calibration_batches(self, smart_config: SmartConfig) -> list:
        if self.train_dataset is None:
            raise ValueError(f"score_init={smart_config.score_init!r} needs calibration_data or a train_dataset.")
        loader = self.get_train_dataloader()
        return list(itertools.islice(iter(loader), smart_config.calibration_batches))

    # --- listeners of the stage driver (`SmartStages`) ---
    def _on_search_begins(self, driver: SmartStages) -> None:
        """Still dense here: record the dense metrics and, for distillation, snapshot the teacher."""
        if self.eval_dataset is not None:
            self.dense_metrics = self.evaluate(metric_key_prefix="dense")
        if self.args.distill_alpha > 0 and self.teacher_model is None:
            teacher = copy.deepcopy(driver.model)
            set_mode(teacher, "dense")  # the teacher is the unpruned network
            self.teacher_model = teacher.eval().requires_grad_(False)

    def _on_hardening(self, driver: SmartStages) -> None:
        self._eval_loss_before_hardening = self._hardening_eval_loss(reuse_logged=True)

    def _on_hardened(self, driver: SmartStages) -> None:
        before = self._eval_loss_before_hardening
        after = self._hardening_eval_loss(reuse_logged=False) if before is not None else None
        if before is not None and after is not None:
            self.smart_callback.extra_logs.update(
                {"smart/eval_loss_before_hardening": before, "smart/eval_loss_after_hardening": after}
            )
            logger.info("smart_hf: hardened masks; eval loss %.4f -> %.4f", before, after)

    def _hardening_eval_loss(self, reuse_logged: bool) -> float | None:
        """The eval loss of the model as it is now, on the first eval set, for the hardening jump; ``None`` unless
        ``log_hardening_jump`` asks for it, there is an eval set and the run evaluates at all (``eval_strategy !=
        "no"``: a run without evaluations gets none from here).

        Each model state is evaluated once: hardening runs before an optimizer step, so the soft masks are those the
        scheduled evaluation of the step just ended saw, when there was one (``reuse_logged``: its logged loss is
        taken); the hard masks are new, and the next scheduled evaluation comes after a fine-tune step. Only the
        first eval set is evaluated, the one whose loss is reported (others, e.g. a test split, are left alone).
        """
        if self.eval_dataset is None or not self.args.log_hardening_jump:
            return None
        if str(getattr(self.args.eval_strategy, "value", self.args.eval_strategy)) == "no":
            return None
        name = next(iter(self.eval_dataset), None) if isinstance(self.eval_dataset, dict) else None
        prefix = f"eval_{name}" if name is not None else "eval"
        if reuse_logged:
            logged = _logged_at_step(self.state.log_history, self.state.global_step, f"{prefix}_loss")
            if logged is not None:
                return logged
        metrics = self.evaluate(name, metric_key_prefix=prefix)  # name None: the one eval set
        return metrics.get(f"{prefix}_loss")

    # --- documented Trainer hooks ---
    def create_optimizer(self, model=None):
        """The Trainer's optimizer, plus parameter groups for the mask scores (`score_parameter_groups`: their own
        learning rate per kind of budget group, no weight decay).

        Args:
            model: the model whose parameters to optimise; default the trainer's.

        Returns:
            The optimizer (the existing one if it was already created).
        """
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        scores = [p for n, p in model.named_parameters() if n.endswith(SCORES_NAME) and p.requires_grad]
        for p in scores:  # hidden while the Trainer builds its groups, so they are not decayed with the weights
            p.requires_grad_(False)
        try:  # transformers < 5.x-late takes no `model` argument
            optimizer = super().create_optimizer(model) if model is not self.model else super().create_optimizer()
        finally:
            for p in scores:
                p.requires_grad_(True)
        for group in score_parameter_groups(model, self.args.score_learning_rate) if scores else []:
            optimizer.add_param_group(group)  # per kind of budget group (N:M / structured), no weight decay
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The Trainer's loss, mixed with the distillation loss against the teacher while searching and fine-tuning
        (``(1 - distill_alpha) * loss + distill_alpha * distillation_loss``) when ``args.distill_alpha > 0``.

        Args:
            model: the model being trained.
            inputs: the batch (with ``labels``).
            return_outputs: also return the model's outputs.
            num_items_in_batch: the Trainer's token count for loss normalisation.

        Returns:
            The loss, or ``(loss, outputs)`` with ``return_outputs=True``.
        """
        use_teacher = (
            self.args.distill_alpha > 0
            and self.teacher_model is not None
            and model.training
            and self.smart_callback.stage_at(self.state.global_step) != "pretrain"
        )
        if not use_teacher:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        teacher = self.teacher_model.to(next(model.parameters()).device)
        with torch.no_grad():
            teacher_logits = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        loss = (1 - self.args.distill_alpha) * loss + self.args.distill_alpha * distillation_loss(
            outputs.logits, teacher_logits, self.args.distill_temperature
        )
        return (loss, outputs) if return_outputs else loss

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, except that ``resume_from_checkpoint=True`` resumes from the last *complete* checkpoint.

        A process killed while saving leaves ``checkpoint-N`` without ``trainer_state.json`` (the stock Trainer
        writes it last); the stock ``get_last_checkpoint`` would pick that folder and fail or resume from partial
        state. Here it is skipped with a warning, and naming it explicitly is a clear error.

        Args:
            resume_from_checkpoint: a checkpoint folder, or ``True`` for the last complete one in ``output_dir``.
            trial: the hyper-parameter search trial, as in `Trainer.train`.
            ignore_keys_for_eval: output keys the evaluations ignore, as in `Trainer.train`.
            **kwargs: passed on to `Trainer.train`.

        Returns:
            The Trainer's `TrainOutput` (global step, training loss, metrics).

        Raises:
            ValueError: ``resume_from_checkpoint`` names an incomplete checkpoint, or ``True`` finds none.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)) and not _is_complete(resume_from_checkpoint):
            raise ValueError(
                f"{resume_from_checkpoint} is not a complete checkpoint (no {TRAINER_STATE_NAME}; the process was "
                "probably killed while saving it); pass resume_from_checkpoint=True to use the last complete one."
            )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
            **kwargs,
        )


def _checked_inputs(model, args, smart_config, train_dataset) -> SmartTrainingArguments:
    """`SmartTrainer`'s arguments checked (its ``Raises:``); returns ``args``, defaulted when ``None``."""
    if model is None:
        raise ValueError("SmartTrainer needs a model (model_init is not supported: the masks live on the model).")
    if args is None:
        args = SmartTrainingArguments(output_dir="smart_output")
    if not isinstance(args, SmartTrainingArguments):
        raise ValueError(
            f"SmartTrainer needs SmartTrainingArguments, got {type(args).__name__}; build them with "
            "SmartTrainingArguments(output_dir=..., ...)."
        )
    if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
        raise ValueError(
            "train_dataset is empty; pass a dataset with at least one example (check the split and any filtering)."
        )
    if not is_prepared(model) and not isinstance(smart_config, SmartConfig):
        raise ValueError("pass smart_config=SmartConfig(...) (or a model already prepared with prepare_model).")
    return args


def _logged_at_step(log_history: list[dict], step: int, key: str) -> float | None:
    """``key`` of the latest log entry of optimizer step ``step`` that has it, or ``None``."""
    for entry in reversed(log_history):
        if entry.get("step") != step:
            return None
        if key in entry:
            return entry[key]
    return None


def _is_complete(checkpoint: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(checkpoint, TRAINER_STATE_NAME))


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str:
    """The highest-step ``checkpoint-N`` under ``output_dir`` that holds ``trainer_state.json`` (written last)."""
    found = []
    if os.path.isdir(output_dir):
        for entry in os.listdir(output_dir):
            match = _CHECKPOINT_DIR.match(entry)
            if match and os.path.isdir(os.path.join(output_dir, entry)):
                found.append((int(match.group(1)), os.path.join(output_dir, entry)))
    for _step, path in sorted(found, reverse=True):
        if _is_complete(path):
            return path
        logger.warning(
            "smart_hf: skipping %s: incomplete (no %s), probably killed while saving", path, TRAINER_STATE_NAME
        )
    raise ValueError(
        f"resume_from_checkpoint=True found no complete checkpoint-N folder in {output_dir}; train without "
        "resume_from_checkpoint, or pass the path of a checkpoint folder."
    )
