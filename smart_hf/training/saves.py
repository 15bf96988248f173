"""The saves of `SmartTrainer`: a mixin placed before ``transformers.Trainer``.

Two kinds of saves: the Trainer's own checkpoints go to `save_checkpoint` -- the full SMART state, for
``resume_from_checkpoint``; every other ``save_model`` goes to `save_pruned_model` -- the squashed, stock-loadable
artifact -- and ``push_to_hub`` pushes that artifact. No documented hook tells the two apart: the Trainer's
checkpointing calls ``save_model(output_dir, _internal_call=True)``, and `SmartTrainer.save_model` reads that private
parameter openly. ``tests/training/test_trainer.py`` pins it (the parameter in ``Trainer.save_model``'s signature and the
Trainer's checkpointing passing it), so a transformers release that changes it fails the suite, not a user's run.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from transformers.trainer import TRAINING_ARGS_NAME

from ..artifact.card import metrics_from_log_history
from ..artifact.export import save_pruned, save_state_dict, unsharded_copy
from ..artifact.hub import push_pruned_to_hub
from ..distributed import has_sharded_parameters

logger = logging.getLogger(__name__)

__all__ = ["HUB_ARTIFACT_DIR", "SmartSaves"]

HUB_ARTIFACT_DIR = "hub_artifact"  # under output_dir: the exact folder `push_to_hub` uploads


class SmartSaves:
    """The saves of `SmartTrainer` (mixed in before ``Trainer``): checkpoints keep the SMART state, every other save
    and push writes the pruned artifact (see the module docstring)."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The pruned artifact (`save_pruned_model`; with ``push_to_hub`` also pushed), or a training checkpoint.

        ``_internal_call`` is the stock Trainer's private parameter, overridden here in the open: its checkpointing
        passes ``True`` and those saves go to `save_checkpoint` (the full SMART state, for
        ``resume_from_checkpoint``). Pinned by ``tests/training/test_trainer.py`` against the installed transformers.

        Args:
            output_dir: the folder; default ``args.output_dir``.
            _internal_call: ``True`` only from the Trainer's own checkpointing.
        """
        output_dir = output_dir or self.args.output_dir
        if _internal_call:
            return self.save_checkpoint(output_dir)
        self.save_pruned_model(output_dir)
        if self.args.push_to_hub:  # Trainer semantics: a user's save_model also pushes
            self.push_to_hub(commit_message="Model save")

    def save_pruned_model(self, output_dir: str) -> None:
        """The pruned, stock-loadable model with ``smart_config.json``, the sparsity report, model card and plots
        (`save_pruned`); ``training_args.bin`` without the hub token.

        Args:
            output_dir: the folder of the artifact.
        """
        if self.args.should_save or has_sharded_parameters(self.model):  # FSDP2: every rank joins the gather
            save_pruned(
                self.model,
                output_dir,
                processing_class=self.processing_class,
                log_history=self.state.log_history,
                save_plots=self.args.save_plots,
                stages=self.smart_callback.stages,
                command=self.reproduce_command,
            )
        if self.args.should_save:
            self._save_training_args(output_dir)

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """Push the *pruned* artifact (squashed weights, ``smart_config.json``, sparsity report, model card) to
        ``args.hub_model_id`` (default: the name of ``output_dir``).

        The exact folder that is uploaded is written first, atomically, to ``<output_dir>/hub_artifact`` and kept.
        ``token`` / ``private`` / ``revision`` default to ``args.hub_token`` / ``hub_private_repo`` /
        ``hub_revision``. Extra keyword arguments of `Trainer.push_to_hub` (model-card fields) are accepted:
        ``base_model`` / ``finetuned_from`` set the card's base model, ``metrics`` its metric table; the rest are
        ignored.

        Args:
            commit_message: the commit message on the Hub.
            blocking: wait for the upload; ``False`` returns a `Future` at once.
            token: the Hub token; default ``args.hub_token``.
            revision: the branch to push to; default ``args.hub_revision``.
            private: create the repository private; default ``args.hub_private_repo``.
            **kwargs: `Trainer.push_to_hub`'s model-card fields (``base_model`` / ``finetuned_from``, ``metrics``).

        Returns:
            The `CommitInfo` (a `Future` of it with ``blocking=False``), ``None`` off process zero.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model = unsharded_copy(self.model) if has_sharded_parameters(self.model) else self.model  # FSDP2: all ranks
        if not self.is_world_process_zero():
            return None
        repo_id = (
            self.hub_model_id or self.args.hub_model_id or os.path.basename(os.path.abspath(self.args.output_dir))
        )
        base_model = kwargs.pop("base_model", None) or kwargs.pop("finetuned_from", None)
        metrics = kwargs.pop("metrics", None)
        if kwargs:
            logger.info("smart_hf: push_to_hub ignores model-card fields %s", sorted(kwargs))
        result = push_pruned_to_hub(
            model,
            repo_id,
            token=token if token is not None else self.args.hub_token,
            private=private if private is not None else self.args.hub_private_repo,
            commit_message=commit_message or "Upload pruned model (smart_hf)",
            local_dir=os.path.join(self.args.output_dir, HUB_ARTIFACT_DIR),
            revision=revision if revision is not None else self.args.hub_revision,
            processing_class=self.processing_class,
            metrics=metrics if metrics is not None else metrics_from_log_history(self.state.log_history),
            base_model=base_model,
            run_as_future=not blocking,
            save_plots=self.args.save_plots,
            log_history=self.state.log_history,
            stages=self.smart_callback.stages,
            command=self.reproduce_command,
        )
        return result

    def _save_training_args(self, output_dir: str) -> None:
        """``training_args.bin`` as the stock Trainer writes it, minus ``hub_token``: the file is a pickle that
        lands in artifacts people push, and a token must never travel with a model."""
        safe_args = copy.copy(self.args)
        safe_args.hub_token = None
        torch.save(safe_args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def save_checkpoint(self, output_dir: str) -> None:
        """A training checkpoint: weights, mask scores and SMART state under the model's *own* state-dict keys.

        transformers 5 ``save_pretrained`` renames keys to the legacy layout (``vit.layers.0.attention.q_proj`` ->
        ``vit.encoder.layer.0.attention.attention.query``) while ``Trainer._load_from_checkpoint`` loads with a plain
        ``load_state_dict``: the resumed model would silently keep its initial weights. Writing the state dict
        as-is (safetensors) makes ``resume_from_checkpoint`` restore weights, scores and schedule exactly.

        Args:
            output_dir: the checkpoint folder (``checkpoint-N``).
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super().save_model(output_dir, _internal_call=True)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        save_state_dict(model, output_dir)
        if getattr(model, "config", None) is not None:
            model.config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        self._save_training_args(output_dir)
