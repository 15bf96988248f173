"""Names shared by every module: the parameter prefix, the artifact file names, and two small helpers on them."""

# Every parameter, buffer and sub-module that smart_hf adds to a model starts with this prefix, so the optimizer,
# DDP, checkpoints and `squash` can select them by name without special cases.
SMART_PREFIX = "smart_"
SCORES_NAME = "smart_scores"
MASK_NAME = "smart_mask"
STATE_MODULE_NAME = "smart_state"

CONFIG_NAME = "smart_config.json"
REPORT_NAME = "smart_sparsity.json"

PATTERNS = ("block", "channel", "nm", "coupled")
BUDGETS = ("global", "layer")
SCORE_INITS = ("magnitude", "activation", "fisher", "constant")
# Score initialisations read calibration batches (activation statistics; Fisher of coupled units, with labels).
CALIBRATED_SCORE_INITS = ("activation", "fisher")
SCORE_SCALES = ("start_temperature", "standardized")
TEMPERATURE_SCHEDULES = ("dynamic", "exponential", "cosine", "linear", "constant")
WIDTH_MULTIPLES = (1, 8, 16, 32, 64)

# Default score learning rates, as a step of the start logits m / tau0 per optimizer step (score_parameter_groups):
# N:M groups (their one-shot prior is strong: a group of m keeps its n largest) move gently; blocks, channels and
# coupled units, whose global budget has to be redistributed across layers, move 5x faster. Chosen on validation
# (docs/method.md §8).
SCORE_LR_NM = 0.2
SCORE_LR_STRUCTURED = 1.0


def is_smart_name(name: str) -> bool:
    """True for a (possibly dotted) parameter/buffer name that smart_hf added."""
    return name.rsplit(".", 1)[-1].startswith(SMART_PREFIX) or f".{STATE_MODULE_NAME}." in f".{name}"


def first_items(items: list[str], limit: int = 3) -> str:
    """``items`` joined by "; ", the first ``limit`` of them and a count of the rest: for error messages that list
    problems without drowning the fix they name."""
    rest = len(items) - limit
    return "; ".join(items[:limit]) + (f"; ... {rest} more" if rest > 0 else "")
