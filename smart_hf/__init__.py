"""smart_hf: SMART pruning (Separate, Dynamic and Differentiable; arXiv 2403.19969) for Hugging Face Transformers.

The public API is importable from here (``from smart_hf import SmartConfig, SmartTrainer, ...``). The layers of the
package, bottom to top (imports only point down; docs/architecture.md):

* ``core``: pure math (differentiable top-k, schedules, budgets, unit geometry);
* ``config``, ``metadata``: what to prune, and what a pruned model records about itself;
* ``state``, ``layers``, ``scores``, ``distributed``, ``report``, ``inject``, ``lifecycle``: the prepared model;
* ``stages``: `SmartStages`, the stage driver of any training loop (dense pre-train, search, hardening, fine-tune);
* ``slim``: physically smaller models; ``artifact``: export, model card, Hub, invariants, sparse kernels;
* ``training``: `SmartTrainingArguments`, `SmartCallback`, `SmartTrainer`; ``cli``: ``smart-hf``.

The Trainer integration is imported on first use (it pulls in ``transformers.Trainer``).
"""

from ._version import __version__
from .artifact.export import save_pruned
from .artifact.hub import push_pruned_to_hub
from .artifact.invariants import check_sparsity
from .artifact.kernels import to_sparse_kernels
from .config import SmartConfig
from .core.schedule import temperature_at
from .core.topk import hard_topk, mask_fractionality, soft_topk
from .inject import find_targets, prepare_model
from .latency import measure_speedup
from .lifecycle import (
    apply_hard_masks_,
    get_smart_state,
    harden,
    is_prepared,
    reinit_scores,
    score_parameter_groups,
    set_mode,
    set_temperature,
    squash,
    update_temperature,
    zero_pruned_optimizer_state,
)
from .report import format_report, sparsity_report
from .slim import head_pruning_overrides, load_slim, slim
from .stages import SmartStages, distillation_loss

_LAZY = {
    "SmartCallback": "smart_hf.training.callbacks",
    "SmartTrainer": "smart_hf.training.trainer",
    "SmartTrainingArguments": "smart_hf.training.training_args",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'smart_hf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "SmartCallback",
    "SmartConfig",
    "SmartStages",
    "SmartTrainer",
    "SmartTrainingArguments",
    "__version__",
    "apply_hard_masks_",
    "check_sparsity",
    "distillation_loss",
    "find_targets",
    "format_report",
    "get_smart_state",
    "hard_topk",
    "harden",
    "head_pruning_overrides",
    "is_prepared",
    "load_slim",
    "mask_fractionality",
    "measure_speedup",
    "prepare_model",
    "push_pruned_to_hub",
    "reinit_scores",
    "score_parameter_groups",
    "save_pruned",
    "set_mode",
    "set_temperature",
    "slim",
    "soft_topk",
    "sparsity_report",
    "squash",
    "temperature_at",
    "to_sparse_kernels",
    "update_temperature",
    "zero_pruned_optimizer_state",
]
