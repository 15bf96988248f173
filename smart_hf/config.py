"""`SmartConfig`: what to prune and how -- the part of a SMART run that defines the artifact.

Saved next to every pruned model as ``smart_config.json`` (with a version stamp). Training-only knobs (score learning
rate, stage lengths, distillation) live in `SmartTrainingArguments` instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Literal

from packaging import version

from ._field_checks import check_number, check_regex, check_speed_target, choice, int_list, name_list, parse_override
from ._version import __version__
from .constants import BUDGETS, CONFIG_NAME, PATTERNS, SCORE_INITS, SCORE_SCALES, TEMPERATURE_SCHEDULES

logger = logging.getLogger(__name__)

MAX_SCORE_NOISE = 1e3


@dataclass
class SmartConfig:
    """Configuration of a SMART pruning run. Every field is documented in its `help` metadata (`smart-hf train
    --help` prints them); `__post_init__` validates them once and names the fix for every invalid value.

    Raises:
        TypeError: a field of the wrong type (a string sparsity, a block_shape that is not two ints, ...).
        ValueError: a value out of range or fields that contradict each other; the message names the fix.
    """

    # --- what a unit is ---
    pattern: Literal["block", "channel", "nm", "coupled"] = field(
        default="block",
        metadata={
            "help": "Structural unit: 'block' (r x c weight blocks; (1,1) = unstructured), 'channel' (output "
            "channels), 'nm' (keep n of every m consecutive input weights, the 2:4 GPU layout) or 'coupled' "
            "(FFN neurons, attention heads / KV groups and CNN inner channels spanning their layers, removed whole "
            "by slim; sparsity = fraction of their cost removed)."
        },
    )
    coupled_tokens: int = field(
        default=0,
        metadata={
            "help": "pattern='coupled': sequence length whose attention matmuls (2 * tokens * head_dim MACs per "
            "token and query head) are added to a head's cost; 0 counts weights only (= linear MACs per token)."
        },
    )
    block_shape: list[int] = field(
        default_factory=lambda: [4, 4],
        metadata={"help": "Block size [rows, cols] over the (out, in) weight plane, used when pattern='block'."},
    )
    n: int = field(default=2, metadata={"help": "N of N:M: weights kept per group (pattern='nm')."})
    m: int = field(default=4, metadata={"help": "M of N:M: group length along the input dimension (pattern='nm')."})
    # --- how much ---
    sparsity: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of targeted weights to remove, in [0, 1). Default 0.5 for block/channel; N:M "
            "fixes it at 1 - n/m."
        },
    )
    target_speedup: float | None = field(
        default=None,
        metadata={
            "help": "pattern='coupled' only: prune to a measured speed-up instead of a sparsity (dense time / slim "
            "time, e.g. 2.0). At prepare a latency model of the coupled blocks is measured on the model's device "
            "and dtype at latency_batch_size x latency_seq_len and cached (smart_hf.latency); the global budget "
            "then spends measured time. Give either this or `sparsity`, not both."
        },
    )
    latency_batch_size: int = field(
        default=32, metadata={"help": "target_speedup: the batch size the speed-up is measured and aimed at."}
    )
    latency_seq_len: int = field(
        default=128,
        metadata={
            "help": "target_speedup: tokens per sequence of text models (vision models take theirs from the image "
            "size)."
        },
    )
    width_multiple: int | None = field(
        default=None,
        metadata={
            "help": "pattern='coupled', global budget: kept FFN neurons / CNN channels per layer are rounded to a "
            "multiple of this (1, 8, 16, 32 or 64; heads are whole heads / GQA groups anyway), so the slim matmuls "
            "keep kernel-friendly widths. Unset: 8 with target_speedup on CPU, 64 on CUDA, 1 (no rounding) with a "
            "sparsity."
        },
    )
    budget: Literal["global", "layer"] = field(
        default="global",
        metadata={
            "help": "'global': one top-k over all targeted layers (cross-layer ranking, cost-weighted by "
            "unit size); 'layer': every layer pruned to exactly `sparsity`."
        },
    )
    min_layer_density: float = field(
        default=0.0,
        metadata={
            "help": "Global budget guard: every layer keeps at least this fraction of its units (and always "
            "at least one unit), so no layer is removed entirely."
        },
    )
    # --- which layers ---
    target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to prune: exact name or dotted suffix (PEFT rules). Default: every Linear, "
            "Conv2d and Conv1D except embeddings and the task head."
        },
    )
    target_regex: str | None = field(
        default=None, metadata={"help": "Regex (full match on the module name) selecting the modules to prune."}
    )
    exclude_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names (exact or dotted suffix) never to prune."}
    )
    overrides: list[str] | None = field(
        default=None,
        metadata={
            "help": "Per-module settings: a list of dicts (YAML/Python) or JSON strings (command line) with a "
            "'regex' (full match) and any of pattern, block_shape, n, m, sparsity."
        },
    )
    # --- scores and temperature ---
    score_init: Literal["magnitude", "activation", "fisher", "constant"] = field(
        default="magnitude",
        metadata={
            "help": "Initial mask scores: 'magnitude' (unit RMS of the weights), 'activation' (|W| times "
            "input-activation norms from a calibration pass), 'fisher' (pattern='coupled': each unit's empirical "
            "Fisher over labelled calibration batches per unit of budget cost, comparable across layers), "
            "'constant' (plus score_noise; for ablations)."
        },
    )
    score_noise: float = field(
        default=0.0,
        metadata={
            "help": "Std of seeded Gaussian noise added to the initial (normalised, std 1) scores; at most 1e3."
        },
    )
    calibration_batches: int = field(
        default=8, metadata={"help": "Batches of the calibration pass for score_init='activation'."}
    )
    temperature_schedule: Literal["dynamic", "exponential", "cosine", "linear", "constant"] = field(
        default="dynamic",
        metadata={
            "help": "How tau falls during structure search. 'dynamic' = exponential decay that cuts tau and "
            "jitters tied scores when the mask stops getting more binary (docs/method.md)."
        },
    )
    tau_start: float | None = field(
        default=None,
        metadata={
            "help": "Temperature at the start of structure search. Unset (None; 'auto' in Python or JSON): each "
            "budget group starts at the temperature where its soft mask's fractionality is tau_start_fractionality, "
            "and the schedule runs relative to it (tau_end is then a ratio to that start)."
        },
    )
    tau_end: float = field(
        default=1e-2,
        metadata={"help": "Temperature at the end of structure search (a ratio to the start with tau_start='auto')."},
    )
    tau_start_fractionality: float = field(
        default=0.05,
        metadata={"help": "tau_start='auto': mean min(f, 1 - f) of the soft mask at the start, in (0, 0.5)."},
    )
    score_scale: Literal["start_temperature", "standardized"] = field(
        default="start_temperature",
        metadata={
            "help": "Units of the stored scores with tau_start='auto'. 'start_temperature': each group's "
            "standardised scores are divided by its start temperature, so one optimizer step of size "
            "score_learning_rate moves the mask logits of every group alike (2:4 on a BERT starts near 0.05, 4x4 "
            "blocks at 90 percent sparsity near 0.24: in standardised units the same LR is 5x harsher on the "
            "former). "
            "'standardized': mean 0 / std 1 per group, the temperature carries the scale."
        },
    )
    budget_anneal: float = field(
        default=2 / 3,
        metadata={
            "help": "Share of the search over which the soft budget falls from keeping everything to the target "
            "(cubic, then held); 0 = the target from the first step."
        },
    )
    dynamic_window: int = field(
        default=20, metadata={"help": "Dynamic rule: optimizer steps between two fractionality checks."}
    )
    dynamic_min_decrease: float = field(
        default=0.05,
        metadata={
            "help": "Dynamic rule: relative fall of the mask fractionality a window must achieve, else tau is "
            "cut and tied scores are jittered."
        },
    )
    dynamic_cut: float = field(default=0.5, metadata={"help": "Dynamic rule: factor applied to tau at a cut."})
    dynamic_jitter: float = field(
        default=0.1, metadata={"help": "Dynamic rule: seeded score jitter at a cut, in units of the current tau."}
    )
    score_seed: int = field(default=0, metadata={"help": "Seed for score noise and the dynamic rule's jitter."})

    def __post_init__(self):
        if isinstance(self.tau_start, str) and self.tau_start.strip().lower() == "auto":
            self.tau_start = None  # "auto" is the documented spelling of the default (YAML recipes, JSON configs)
        self._check_types()
        check_speed_target(self)
        if self.sparsity is None and self.target_speedup is None:
            self.sparsity = (1.0 - self.n / self.m if self.m > 0 else None) if self.pattern == "nm" else 0.5
        self.overrides = [parse_override(o) for o in (self.overrides or [])] or None
        _validate_unit_settings(self.unit_settings())
        for override in self.overrides or []:
            try:
                _validate_unit_settings(self.unit_settings(override))
            except ValueError as err:  # say which override: the top-level fields may be fine
                raise ValueError(f"override {override!r}: {err}") from err
        self._validate_rest()

    def _check_types(self):
        """Wrong types fail here with a TypeError naming the expected form, before any arithmetic on them (a str
        sparsity would otherwise fail deep inside a comparison, and a str block_shape "44" would become [4, 4])."""
        for name in _INT_FIELDS:
            check_number(name, getattr(self, name), integral=True)
        for name in _REAL_FIELDS:
            check_number(name, getattr(self, name), integral=False)
        self.block_shape = int_list("block_shape", self.block_shape)
        self.target_modules = name_list("target_modules", self.target_modules)
        self.exclude_modules = name_list("exclude_modules", self.exclude_modules)
        if self.target_regex is not None:
            check_regex("target_regex", self.target_regex)
        if self.overrides is not None and not isinstance(self.overrides, (list, tuple)):
            raise TypeError(
                f"overrides must be a list of dicts (or JSON strings), got {type(self.overrides).__name__}; "
                'e.g. overrides=[{"regex": ".*fc1", "sparsity": 0.7}].'
            )

    def _validate_rest(self):
        self._validate_coupled()
        choice("budget", self.budget, BUDGETS)
        choice("score_init", self.score_init, SCORE_INITS)
        if self.score_init == "fisher" and self.pattern != "coupled":
            raise ValueError(
                f"score_init='fisher' scores whole coupled units (neurons, heads, channels), not {self.pattern!r} "
                "units; use pattern='coupled', or score_init='magnitude' / 'activation'."
            )
        choice("temperature_schedule", self.temperature_schedule, TEMPERATURE_SCHEDULES)
        choice("score_scale", self.score_scale, SCORE_SCALES)
        if not 0.0 <= self.min_layer_density < 1.0:
            raise ValueError(f"min_layer_density must be in [0, 1), got {self.min_layer_density}; e.g. 0.05.")
        _validate_search(self)
        if not (0 < (1.0 if self.tau_start is None else self.tau_start) < math.inf and 0 < self.tau_end < math.inf):
            raise ValueError(
                f"tau_start and tau_end must be > 0 and finite, got {self.tau_start} and {self.tau_end}; "
                "e.g. tau_start=1.0, tau_end=1e-4."
            )
        if self.tau_end > (1.0 if self.tau_start is None else self.tau_start):
            raise ValueError(
                f"tau_end ({self.tau_end}) > tau_start ({self.tau_start}): the temperature must fall; "
                "swap them or lower tau_end (e.g. tau_start=1.0, tau_end=1e-4)."
            )
        # the scores are standardised to std 1 before the noise: 1e3 already drowns them, and a huge std overflows
        # float32 scores to inf (found by tests/test_properties.py with score_noise=1.7e38)
        if not 0 <= self.score_noise <= MAX_SCORE_NOISE:
            raise ValueError(
                f"score_noise must be >= 0 and at most {MAX_SCORE_NOISE:g} (the scores it perturbs have std 1), got "
                f"{self.score_noise}; e.g. 0.0 or 0.01."
            )
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be >= 1, got {self.calibration_batches}; e.g. 8.")
        if self.dynamic_window < 1 or not 0 < self.dynamic_cut < 1 or not 0 <= self.dynamic_jitter < math.inf:
            raise ValueError(
                "dynamic rule needs dynamic_window >= 1, 0 < dynamic_cut < 1 and dynamic_jitter >= 0; "
                f"got {self.dynamic_window}, {self.dynamic_cut}, {self.dynamic_jitter}."
            )
        if not 0.0 <= self.dynamic_min_decrease < 1.0:
            raise ValueError(
                f"dynamic_min_decrease must be in [0, 1), got {self.dynamic_min_decrease}; it is the "
                "relative fall of the fractionality expected per window, e.g. 0.05."
            )
        if self.target_modules is not None and self.target_regex is not None:
            raise ValueError("set either target_modules or target_regex, not both (combine them into one regex).")
        if self.target_modules is not None and len(self.target_modules) == 0:
            raise ValueError("target_modules is an empty list; leave it unset (None) to target the default layers.")

    def _validate_coupled(self):
        if self.coupled_tokens < 0:
            raise ValueError(f"coupled_tokens must be >= 0, got {self.coupled_tokens}; e.g. 197 for ViT-224/16.")
        coupled = [o for o in self.overrides or [] if o.get("pattern") == "coupled"]
        if coupled or (self.pattern == "coupled" and self.overrides):
            raise ValueError(
                "pattern='coupled' finds its units (FFN neurons, heads, conv channels) over whole layer groups and "
                "takes no overrides; drop `overrides` (use budget='layer' for the same count in every block)."
            )

    def unit_settings(self, override: dict | None = None) -> UnitSettings:
        """The unit settings of the top level, or of one override layered over it.

        Args:
            override: one entry of ``overrides`` (its ``pattern`` / ``block_shape`` / ``n`` / ``m`` / ``sparsity``
                replace the top level's); ``None`` for the top level itself.

        Returns:
            The resolved `UnitSettings` (for N:M, the sparsity derived from ``n`` and ``m`` unless given).
        """
        o = override or {}
        pattern = o.get("pattern", self.pattern)
        n, m = o.get("n", self.n), o.get("m", self.m)
        if pattern == "nm":  # N:M derives its sparsity; an explicit one must agree (checked in validation)
            sparsity = o.get("sparsity", self.sparsity if o.keys().isdisjoint({"n", "m", "pattern"}) else None)
            sparsity = (1.0 - n / m if m > 0 else None) if sparsity is None else sparsity  # m <= 0: rejected below
        else:
            sparsity = o.get("sparsity", self.sparsity)
        block = tuple(int(v) for v in o.get("block_shape", self.block_shape))
        return UnitSettings(pattern=pattern, block_shape=block, n=n, m=m, sparsity=sparsity)

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-serialisable; the inverse of `from_dict`).

        Returns:
            ``{field name: value}`` for every field.
        """
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``smart_config.json`` (with ``smart_hf_version``) into ``save_directory``, atomically.

        Args:
            save_directory: the folder; created if missing.

        Returns:
            The path of the written ``smart_config.json``.
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        payload = {**self.to_dict(), "smart_hf_version": __version__}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SmartConfig:
        """Load from a directory holding ``smart_config.json`` or from the file itself. Unknown keys (a newer
        smart_hf) are dropped with a warning.

        Args:
            path: a folder written by `save_pretrained` (e.g. a pruned model's), or the JSON file itself.

        Returns:
            The validated `SmartConfig`.

        Raises:
            ValueError: no ``smart_config.json`` at ``path``, a file that is not JSON or not a JSON object, or
                saved values that fail validation.
        """
        file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else str(path)
        if not os.path.isfile(file):
            raise ValueError(f"no {CONFIG_NAME} at {path!r}; pass the directory written by save_pretrained.")
        try:
            with open(file, encoding="utf-8") as fh:
                payload = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(
                f"{file} is not valid JSON ({err}); re-export it with SmartConfig.save_pretrained."
            ) from err
        if not isinstance(payload, dict):
            raise ValueError(
                f"{file} holds a JSON {type(payload).__name__}, not an object of SmartConfig fields; re-export it "
                "with SmartConfig.save_pretrained."
            )
        return cls.from_dict(payload)

    @classmethod
    def from_dict(cls, payload: dict) -> SmartConfig:
        """Build from ``to_dict()`` output (plus an optional ``smart_hf_version``); unknown keys warn and are dropped.

        Args:
            payload: ``{field name: value}``, as `to_dict` writes it.

        Returns:
            The validated `SmartConfig`.

        Raises:
            TypeError: ``payload`` is not a dict, or a field has the wrong type.
            ValueError: a value fails validation.
        """
        if not isinstance(payload, dict):
            raise TypeError(
                f"SmartConfig.from_dict needs a dict of SmartConfig fields (as written by to_dict), got "
                f"{type(payload).__name__}."
            )
        payload = dict(payload)
        saved_version = _parse_version(payload.pop("smart_hf_version", None))
        if saved_version is not None and saved_version > version.parse(__version__):
            logger.warning(
                "smart_config.json was written by smart_hf %s (this is %s); upgrade smart_hf if loading fails.",
                saved_version,
                __version__,
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            logger.warning("ignoring unknown smart_config keys %s (written by a newer smart_hf?)", unknown)
        return cls(**{k: v for k, v in payload.items() if k in known})


@dataclass(frozen=True)
class UnitSettings:
    """The resolved unit settings of one module: the top-level config with any matching override applied."""

    pattern: str
    block_shape: tuple
    n: int
    m: int
    sparsity: float


def _validate_search(config) -> None:
    """The auto start temperature and the budget anneal."""
    check_number("tau_start_fractionality", config.tau_start_fractionality, integral=False)
    check_number("budget_anneal", config.budget_anneal, integral=False)
    if not 0.0 < config.tau_start_fractionality < 0.5:
        raise ValueError(
            f"tau_start_fractionality must be in (0, 0.5), got {config.tau_start_fractionality}; e.g. 0.05."
        )
    if not 0.0 <= config.budget_anneal <= 1.0:
        raise ValueError(f"budget_anneal must be in [0, 1], got {config.budget_anneal}; e.g. 2/3, or 0 for none.")


_INT_FIELDS = (
    "n",
    "m",
    "calibration_batches",
    "dynamic_window",
    "score_seed",
    "coupled_tokens",
    "latency_batch_size",
    "latency_seq_len",
    "width_multiple",
)
_REAL_FIELDS = (
    "sparsity",
    "target_speedup",
    "min_layer_density",
    "score_noise",
    "tau_start",
    "tau_end",
    "dynamic_min_decrease",
    "dynamic_cut",
    "dynamic_jitter",
)


def _parse_version(raw):
    """The saved ``smart_hf_version`` as a Version, or None (with a warning) when it is missing or unreadable."""
    if raw is None:
        return None
    try:
        return version.parse(str(raw))
    except version.InvalidVersion:
        logger.warning("smart_config.json has an unreadable smart_hf_version %r; loading it anyway.", raw)
        return None


def _validate_unit_settings(cfg: UnitSettings) -> None:
    """Checks shared by the top level and every override: pattern, block shape, N:M, sparsity."""
    choice("pattern", cfg.pattern, PATTERNS)
    if len(cfg.block_shape) != 2 or min(cfg.block_shape) < 1:
        raise ValueError(f"block_shape must be two positive ints [rows, cols], got {cfg.block_shape}; e.g. [4, 4].")
    if cfg.pattern == "nm":
        if not (1 <= cfg.n < cfg.m):
            raise ValueError(f"N:M needs 1 <= n < m, got n={cfg.n}, m={cfg.m}; e.g. n=2, m=4.")
        if cfg.sparsity is not None and abs(cfg.sparsity - (1 - cfg.n / cfg.m)) > 1e-9:
            raise ValueError(
                f"pattern='nm' fixes sparsity at 1 - n/m = {1 - cfg.n / cfg.m:g}, but sparsity="
                f"{cfg.sparsity}; drop `sparsity` or change n/m."
            )
    if cfg.sparsity is None and cfg.pattern == "coupled":
        return  # a speed target: the budget is solved at prepare (`smart_hf.latency`)
    if cfg.sparsity is None or not 0.0 <= cfg.sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {cfg.sparsity}; e.g. 0.5 removes half the weights.")
