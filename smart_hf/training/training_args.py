"""`SmartTrainingArguments`: the trainer-only knobs of a SMART run (what defines the artifact is in `SmartConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .._field_checks import check_number
from ..stages import stage_lengths

__all__ = ["SmartTrainingArguments", "stage_lengths"]


@dataclass(repr=False)  # keep TrainingArguments.__repr__, which hides hub_token; a generated one would print it
class SmartTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the SMART stages, the mask-score optimizer group and optional distillation.

    Stages are counted in optimizer steps (so gradient accumulation is accounted for): ``pretrain_steps`` dense
    steps, then ``search_steps`` of structure search (soft masks, falling temperature), then fine-tuning with the
    hard mask for the rest of ``max_steps`` / ``num_train_epochs``.

    Raises:
        TypeError: a stage length that is not an integer, or a rate that is not a number.
        ValueError: a value out of range (negative ``pretrain_steps``, ``search_fraction`` outside (0, 1], an
            unknown ``collapse_action``, ...) or a `TrainingArguments` field that fails its own checks.
    """

    # --- logging: a short run's plot gets points too (TrainingArguments logs every 500 steps) ---
    logging_steps: float = field(
        default=0.02,
        metadata={
            "help": "Log every X optimizer steps (an int), or a fraction of the run's steps in (0, 1). Default "
            "0.02: about 50 log points whatever the run's length. With eval_strategy='steps' and eval_steps unset, "
            "evaluation runs 10 times per run (eval_steps=0.1), not at every log."
        },
    )
    # --- stages ---
    pretrain_steps: int = field(
        default=0, metadata={"help": "Dense optimizer steps before the structure search (stage 1; 0 = start pruned)."}
    )
    search_steps: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps of structure search (stage 2). Default: search_fraction of the steps "
            "left after pretrain_steps."
        },
    )
    search_fraction: float = field(
        default=0.4, metadata={"help": "Share of the post-pretrain steps spent searching when search_steps is unset."}
    )
    # --- mask scores ---
    score_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the smart_scores parameter groups (no weight decay). Unset: 0.2 for N:M and "
            "1.0 for blocks / channels / coupled units, as a step of the start logits m / tau0 "
            "(smart_hf.score_parameter_groups; chosen on validation, docs/method.md §8). A number is used as is."
        },
    )
    # --- distillation ---
    distill_alpha: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distillation loss from the dense teacher (0 = off). The teacher is the dense "
            "model at the start of the search, unless one is passed as SmartTrainer(teacher_model=...)."
        },
    )
    distill_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation."})
    # --- collapse detection ---
    collapse_action: str = field(
        default="raise",
        metadata={
            "help": "What a collapse (the pruned classifier predicts one class for at least 98 percent of the last "
            "256 training examples after it once did not) does: 'raise' (stop with an error naming the fixes), "
            "'warn' (log), 'off' (no check)."
        },
    )
    # --- reporting ---
    log_hardening_jump: bool = field(
        default=True,
        metadata={
            "help": "Log the eval-loss jump at hardening: the soft masks' loss (from the scheduled evaluation of that "
            "step, or one evaluation) and the hard masks' (one evaluation), on the first eval set; only in runs that "
            "evaluate (eval_strategy is not 'no'): a run without evaluations gets none from it."
        },
    )
    save_plots: bool = field(default=True, metadata={"help": "Write PNG plots (needs matplotlib) with save_model."})

    def __post_init__(self):
        if self.eval_steps is None and self.logging_steps == 0.02 and self.eval_strategy == "steps":
            # TrainingArguments evaluates at every log when eval_steps is unset: 50 surprise evaluations here.
            # load_best_model_at_end needs evaluations where checkpoints are saved.
            self.eval_steps = self.save_steps if self.load_best_model_at_end else 0.1
        super().__post_init__()
        for name in ("pretrain_steps", "search_steps"):
            check_number(name, getattr(self, name), integral=True)
        for name in ("search_fraction", "score_learning_rate", "distill_alpha", "distill_temperature"):
            check_number(name, getattr(self, name), integral=False)
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps must be >= 0, got {self.pretrain_steps}; 0 starts pruning at once.")
        if self.search_steps is not None and self.search_steps < 1:
            raise ValueError(f"search_steps must be >= 1, got {self.search_steps}; the structure search needs steps.")
        # `not a < x <= b` (rather than `x <= a or x > b`) also rejects NaN
        if not 0.0 < self.search_fraction <= 1.0:
            raise ValueError(f"search_fraction must be in (0, 1], got {self.search_fraction}; e.g. 0.4.")
        if self.score_learning_rate is not None and not 0.0 < self.score_learning_rate < math.inf:
            raise ValueError(
                f"score_learning_rate must be > 0 and finite, got {self.score_learning_rate}; e.g. 0.2, or leave it "
                "unset for the defaults per pattern."
            )
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}; 0 turns distillation off.")
        if self.collapse_action not in ("raise", "warn", "off"):
            raise ValueError(f"collapse_action must be 'raise', 'warn' or 'off', got {self.collapse_action!r}.")
        if not 0.0 < self.distill_temperature < math.inf:
            raise ValueError(f"distill_temperature must be > 0 and finite, got {self.distill_temperature}; e.g. 2.0.")

