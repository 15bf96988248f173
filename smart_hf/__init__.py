"""smart_hf: SMART pruning (Separate, Dynamic and Differentiable; arXiv 2403.19969) for Hugging Face Transformers."""

__version__ = "0.1.0"

from .config import SmartConfig  # noqa: E402
from .export import save_pruned  # noqa: E402
from .hub import push_pruned_to_hub  # noqa: E402
from .inject import find_targets, prepare_model  # noqa: E402
from .invariants import check_sparsity  # noqa: E402
from .lifecycle import (  # noqa: E402
    apply_hard_masks_,
    get_smart_state,
    harden,
    reinit_scores,
    set_mode,
    set_temperature,
    squash,
    update_temperature,
)
from .report import format_report, sparsity_report  # noqa: E402
from .schedule import temperature_at  # noqa: E402
from .slimming import head_pruning_overrides, load_slim, slim  # noqa: E402
from .sparse import to_sparse_kernels  # noqa: E402
from .topk import hard_topk, mask_fractionality, soft_topk  # noqa: E402

__all__ = [
    "SmartConfig",
    "__version__",
    "apply_hard_masks_",
    "check_sparsity",
    "find_targets",
    "format_report",
    "get_smart_state",
    "hard_topk",
    "harden",
    "head_pruning_overrides",
    "load_slim",
    "mask_fractionality",
    "prepare_model",
    "push_pruned_to_hub",
    "reinit_scores",
    "set_mode",
    "save_pruned",
    "set_temperature",
    "slim",
    "soft_topk",
    "sparsity_report",
    "squash",
    "temperature_at",
    "to_sparse_kernels",
    "update_temperature",
]
