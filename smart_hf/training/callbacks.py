"""`SmartCallback`: the three SMART stages for any `transformers.Trainer` (also `Seq2SeqTrainer`, TRL's trainers).

The stages run on `smart_hf.SmartStages` (``smart_hf/stages.py``), built at ``on_train_begin`` from the run's
``max_steps`` and the Trainer's optimizer: ``on_step_begin`` calls its `before_step` (dense pre-train, the search with
its temperature and budget anneal, hardening with the optimizer moments of pruned weights zeroed) and ``on_step_end``
its `after_step` (hard masks re-applied in the fine-tune stage). A stock Trainer's optimizer puts the scores in the
weights' parameter group, which `SmartStages` warns about (`SmartTrainer` gives them their own groups).

At the end of training (``on_train_end``) the model is hardened if it is not yet, and `check_sparsity` verifies it
(exact kept counts per budget, valid pattern, pruned weights exactly zero; a few milliseconds on the report the
callback already logs). Success logs ``smart_hf: sparsity verified ...`` at INFO; a violation is logged at ERROR and
raises ValueError (``verify_sparsity="raise"``, the default: ``train()`` then fails before a broken artifact can be
saved), or is only logged (``"warn"``); ``"off"`` skips the check. The result is kept in ``self.verification``.

Then the callback hands over the artifact, so that a Trainer which knows nothing of SMART still produces it: it writes
the pruned, stock-loadable model with its report and card to ``<output_dir>/pruned`` (``save_pruned_to``; the path is
kept in ``self.pruned_dir``) and squashes the model in place (``squash_at_end``), so that the Trainer's own
``save_model()`` / ``push_to_hub()`` also write plain pruned weights, never raw SMART state. A PEFT model is left as
it is (merge it with `smart_hf.integrations.peft.merge_and_unload`); `SmartTrainer` turns both off (its
``save_model`` writes the artifact, and it keeps the SMART state).

The model must be prepared (`prepare_model`) before the Trainer creates its optimizer. `SmartTrainer` adds this
callback itself, first in the list, so the smart metrics it adds to ``logs`` reach every ``report_to`` backend.

The callback owns the stage bookkeeping (`stage_at`, ``stages``, ``driver``) and knows nothing of the Trainer: code
that wants to act at the stage transitions (`SmartTrainer` evaluates the dense model, snapshots a distillation
teacher, measures the hardening jump) registers listeners with `add_listener`, which the driver calls.
"""

from __future__ import annotations

import logging
import os

from transformers import TrainerCallback

from ..artifact.export import save_pruned
from ..artifact.invariants import check_sparsity
from ..distributed import has_sharded_parameters
from ..inject import adapter_module_names
from ..lifecycle import get_smart_state, is_prepared, squash, unwrap_model
from ..metadata import read as read_metadata
from ..report import sparsity_report
from ..stages import EVENTS, STAGES, SmartStages, stage_at
from .collapse import CollapseMonitor, react_to_collapse
from .training_args import SmartTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["SmartCallback"]

# ``smart/stage`` in the logs is numeric (every report_to backend plots numbers): 1, 2, 3
_STAGE_LOG_VALUE = {name: i + 1 for i, name in enumerate(STAGES)}
VERIFY_CHOICES = ("raise", "warn", "off")
COLLAPSE_CHOICES = ("raise", "warn", "off")


class SmartCallback(TrainerCallback):
    """Drives the SMART stages inside a Trainer.

    Args:
        pretrain_steps: dense optimizer steps before the search; used when the Trainer's args are not
            `SmartTrainingArguments` (whose fields then win), as are the next two.
        search_steps: structure-search optimizer steps, or ``None`` for ``search_fraction`` of the steps after the
            dense stage.
        search_fraction: share of the post-dense steps searched when ``search_steps`` is ``None``.
        calibration_data: input batches for ``score_init="activation"`` / ``"fisher"`` (with labels) at the start of
            the search; required for such a model when the search begins from the dense mode
            (``pretrain_steps > 0``), checked before step 0.
        verify_sparsity: ``"raise"`` (default), ``"warn"`` or ``"off"``: what a failed end-of-training
            `check_sparsity` does (see the module docstring).
        collapse_action: ``"raise"`` (default), ``"warn"`` or ``"off"``: what a detected collapse does
            (`smart_hf.training.collapse`); `SmartTrainingArguments.collapse_action` wins when the args are those.
        save_pruned_to: sub-folder of ``args.output_dir`` for the end-of-training artifact (``None``: none).
        squash_at_end: squash the model in place after training (see the module docstring); ``False`` keeps the
            SMART state, to train on or to call `save_pruned` yourself.
    """

    def __init__(
        self,
        pretrain_steps: int = 0,
        search_steps: int | None = None,
        search_fraction: float = 0.4,
        calibration_data=None,
        verify_sparsity: str = "raise",
        collapse_action: str = "raise",
        save_pruned_to: str | None = "pruned",
        squash_at_end: bool = True,
    ):
        if verify_sparsity not in VERIFY_CHOICES:
            raise ValueError(f"verify_sparsity must be one of {VERIFY_CHOICES}, got {verify_sparsity!r}.")
        if collapse_action not in COLLAPSE_CHOICES:
            raise ValueError(f"collapse_action must be one of {COLLAPSE_CHOICES}, got {collapse_action!r}.")
        self.collapse_action = collapse_action
        self.collapse_monitor: CollapseMonitor | None = None
        self.collapse_warned_step = -1
        self.verify_sparsity = verify_sparsity
        self.verification: dict | None = None  # the last end-of-training check_sparsity result
        self.save_pruned_to, self.squash_at_end = save_pruned_to, squash_at_end
        self.pruned_dir: str | None = None  # where on_train_end wrote the pruned artifact
        self.pretrain_steps, self.search_steps, self.search_fraction = pretrain_steps, search_steps, search_fraction
        self.calibration_data = calibration_data
        self.stages: tuple[int, int, int] | None = None
        self.driver: SmartStages | None = None  # built at on_train_begin
        self._listeners: list[tuple[str, object]] = []
        self.extra_logs: dict[str, float] = {}

    def stage_at(self, step: int) -> str:
        """``"pretrain"``, ``"search"`` or ``"finetune"``: the stage of optimizer step ``step`` (0-based).

        Args:
            step: the optimizer step.

        Returns:
            The stage name (`smart_hf.stages.stage_at` of ``stages``).
        """
        return stage_at(step, self.stages)

    def add_listener(self, event: str, listener) -> None:
        """Have the stage driver call ``listener(driver)`` at ``event`` (see `SmartStages.add_listener`), in every
        ``train()`` of this callback, after the callback's own listeners.

        Args:
            event: ``"search_begins"``, ``"hardening"`` or ``"hardened"``.
            listener: a callable taking the `SmartStages` driver.

        Raises:
            ValueError: an unknown event.
        """
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event!r}.")
        self._listeners.append((event, listener))

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Build the stage driver from the run's ``max_steps`` and optimizer; start the collapse monitor.

        Args:
            args, state, control, model, optimizer, **kwargs: as the Trainer passes them to every callback.
        """
        pretrain_steps, search_steps, search_fraction = _stage_args(args, self)
        _smart_state_of(model)  # a model squashed by an earlier train() gets the fix named
        self.driver = SmartStages(
            model,
            optimizer,
            total_steps=state.max_steps,
            pretrain_steps=pretrain_steps,
            search_steps=search_steps,
            search_fraction=search_fraction,
            calibration_data=self.calibration_data,
            start_step=state.global_step,
        )
        self.stages = self.driver.stages
        self.driver.add_listener("search_begins", self._on_search_begins)
        self.driver.add_listener("hardened", self._on_hardened)
        for event, listener in self._listeners:
            self.driver.add_listener(event, listener)
        self._start_collapse_monitor(args, model)
        self.driver.before_step(state.global_step)

    def _on_search_begins(self, driver: SmartStages) -> None:
        if self.collapse_monitor is not None:
            self.collapse_monitor.start_search()

    def _on_hardened(self, driver: SmartStages) -> None:
        self.extra_logs["smart/fractionality_at_hardening"] = driver.fractionality_at_hardening

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Before an optimizer step: the driver's `SmartStages.before_step`.

        Args:
            args, state, control, model, optimizer, **kwargs: as the Trainer passes them to every callback.
        """
        self.driver.before_step(state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """After an optimizer step: the driver's `SmartStages.after_step`, then the collapse check.

        Args:
            args, state, control, model, **kwargs: as the Trainer passes them to every callback.
        """
        self.driver.after_step(state.global_step)
        if self.collapse_monitor is not None:
            self._check_collapse(state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        """Only pruned (hardened) checkpoints may be "best": a dense or mid-search checkpoint that won
        ``metric_for_best_model`` would make ``load_best_model_at_end`` end the run on an unpruned model. The Trainer
        has just picked the best of this evaluation; forget it while the masks are not final, so the first hardened
        evaluation starts the competition afresh.

        Args:
            args, state, control, model, **kwargs: as the Trainer passes them to every callback.
        """
        if model is not None and not get_smart_state(model).is_hard:
            state.best_metric = state.best_model_checkpoint = None
            if hasattr(state, "best_global_step"):  # transformers >= 5.x keeps the step too
                state.best_global_step = None

    def on_train_end(self, args, state, control, model=None, optimizer=None, processing_class=None, **kwargs):
        """Harden if not yet, verify the sparsity, write the artifact and squash (see the module docstring).

        Args:
            args, state, control, model, optimizer, processing_class, **kwargs: as the Trainer passes them.

        Raises:
            ValueError: the sparsity check failed with ``verify_sparsity="raise"``.
        """
        if self.collapse_monitor is not None:
            self.collapse_monitor.detach()
            self.collapse_monitor = None
        if self.driver is not None:
            self.driver.finish()
        if self.verify_sparsity != "off":
            self.verification, error = _verify_at_end(model)
            if error is not None and self.verify_sparsity == "raise":
                raise error
        if adapter_module_names(unwrap_model(model)):
            logger.info(
                "smart_hf: the model has PEFT adapters; write the pruned artifact with merged = "
                "smart_hf.integrations.peft.merge_and_unload(model); smart_hf.save_pruned(merged, folder)"
            )
            return
        written = _hand_over_artifact(
            args, state, model, processing_class, self.save_pruned_to, self.squash_at_end, self.stages
        )
        self.pruned_dir = written or self.pruned_dir

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        """Add the ``smart/*`` metrics (stage, temperature, fractionality, sparsity) to ``logs`` and the log history.

        Args:
            args, state, control, logs, model, **kwargs: as the Trainer passes them to every callback.
        """
        if logs is None or model is None or self.stages is None or not is_prepared(model):
            return  # (not prepared: squashed at the end of training, before the Trainer's last log)
        step_stage = self.stage_at(max(state.global_step - 1, 0))
        extra = {**_smart_log_values(get_smart_state(model), step_stage), **self.extra_logs}
        self.extra_logs = {}
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    # --- collapse detection (smart_hf/training/collapse.py) ---
    def _start_collapse_monitor(self, args, model) -> None:
        if isinstance(args, SmartTrainingArguments):
            self.collapse_action = args.collapse_action
        if self.collapse_action != "off" and self.collapse_monitor is None:
            self.collapse_monitor = CollapseMonitor()
            self.collapse_monitor.attach(model)

    def _check_collapse(self, step: int) -> None:
        """After every optimizer step (`react_to_collapse`): a collapse in the search or fine-tune stage is logged
        and, with ``collapse_action="raise"``, stops the run with an error naming the fixes."""
        dense_stage = self.stage_at(max(step - 1, 0)) == "pretrain"
        self.collapse_warned_step = react_to_collapse(
            self.collapse_monitor, step, dense_stage, self.collapse_action, self.collapse_warned_step, self.extra_logs
        )


def _stage_args(args, callback: SmartCallback) -> tuple[int, int | None, float]:
    """``(pretrain_steps, search_steps, search_fraction)``: `SmartTrainingArguments`' fields, else the callback's."""
    if isinstance(args, SmartTrainingArguments):
        return args.pretrain_steps, args.search_steps, args.search_fraction
    return callback.pretrain_steps, callback.search_steps, callback.search_fraction


def _smart_state_of(model):
    """`get_smart_state`, naming the fix for a model this callback squashed at the end of an earlier ``train()``."""
    if not is_prepared(model) and read_metadata(unwrap_model(model)):
        raise ValueError(
            "this model is already pruned and squashed (SmartCallback squashes it at the end of train()); to search "
            "again prepare a fresh model, or pass SmartCallback(squash_at_end=False) to keep the SMART state after "
            "training."
        )
    return get_smart_state(model)


def _verify_at_end(model) -> tuple[dict, ValueError | None]:
    """The end-of-training `check_sparsity`: its result (logged at INFO) and ``None``, or, for a violation (logged at
    ERROR), ``{"verified": False, "error": ...}`` and the error."""
    try:
        result = check_sparsity(get_smart_state(model))
    except ValueError as err:
        logger.error("smart_hf: SPARSITY CHECK FAILED at the end of training: %s", err)
        return {"verified": False, "error": str(err)}, err
    total = result["total"]
    logger.info(
        "smart_hf: sparsity verified: %d layers, %d of %d targeted weights zero (%.4f), pattern valid, budget exact",
        len(result["layers"]),
        total["zeros"],
        total["weights"],
        total["sparsity"],
    )
    return result, None


def _hand_over_artifact(args, state, model, processing_class, save_pruned_to, squash_at_end, stages) -> str | None:
    """``<output_dir>/<save_pruned_to>``, then the model squashed in place (see the module docstring); returns the
    folder written, or ``None`` when this process wrote none."""
    sharded = has_sharded_parameters(model)
    pruned_dir = None
    if save_pruned_to and (args.should_save or sharded):  # FSDP2: every rank joins the gather
        pruned_dir = os.path.join(args.output_dir, save_pruned_to)
        save_pruned(
            model,
            pruned_dir,
            processing_class=processing_class,
            log_history=state.log_history,
            save_plots=getattr(args, "save_plots", True),
            stages=stages,
            replace_folder=True,
        )
        logger.info("smart_hf: pruned, stock-loadable model written to %s", pruned_dir)
    if squash_at_end:
        if sharded:
            logger.warning("smart_hf: not squashing an FSDP-sharded model; save it with smart_hf.save_pruned")
        else:
            squash(unwrap_model(model))
    return pruned_dir


def _smart_log_values(smart, stage: str) -> dict[str, float]:
    """The ``smart/*`` metrics a log gets: the stage (numeric), temperature, fractionality and sparsity."""
    return {
        "smart/stage": _STAGE_LOG_VALUE[stage],
        "smart/temperature": smart.tau,
        "smart/fractionality": smart.fractionality() if smart.mode_name == "soft" else 0.0,
        "smart/sparsity": sparsity_report(smart)["total"]["sparsity"] if smart.mode_name != "dense" else 0.0,
    }
