"""Type and format checks of `SmartConfig` fields: each raises a TypeError / ValueError that names the accepted form.

Kept apart from `config.py` (which owns the schema and its cross-field rules): these look at one value, or (the
speed target) at the few fields that go with it.
"""

from __future__ import annotations

import json
import math
import numbers
import re

from .constants import WIDTH_MULTIPLES

OVERRIDE_KEYS = {"regex", "pattern", "block_shape", "n", "m", "sparsity"}
_OVERRIDE_EXAMPLE = 'e.g. {"regex": ".*mlp.fc1", "pattern": "block", "block_shape": [4, 4], "sparsity": 0.7}'


def check_number(name: str, value, integral: bool) -> None:
    """``value`` must be an int (``integral``) or a real number; ``None`` passes (fields that default from others).
    bool is refused although it is an int subclass: ``sparsity=True`` is a slip, not 1.0."""
    kind = numbers.Integral if integral else numbers.Real
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        expected, example = ("an int", 2) if integral else ("a number", 0.5)
        raise TypeError(
            f"{name} must be {expected}, got {value!r} ({type(value).__name__}); pass a number without quotes, "
            f"e.g. {example}."
        )


def int_list(name: str, value) -> list[int]:
    """A list/tuple of ints, as a list. A str is refused: "44" would otherwise be read as [4, 4]."""
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    )
    if not ok:
        raise TypeError(f"{name} must be a list of two ints [rows, cols], got {value!r}; e.g. {name}=[4, 4].")
    return [int(v) for v in value]


def name_list(name: str, value) -> list[str] | None:
    """None or a list/tuple of module-name strings. A bare str is refused: it would be matched letter by letter."""
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(
            f"{name} must be a list of module names, got the string {value!r}; write {name}=[{value!r}] "
            "(or use target_regex for a regular expression)."
        )
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{name} must be a list of module-name strings such as ['q_proj', 'v_proj'], got {value!r}.")
    return list(value)


def check_regex(name: str, pattern) -> None:
    if not isinstance(pattern, str):
        raise TypeError(f"{name} must be a regular-expression string, got {pattern!r}; e.g. r'.*attention\\..*'.")
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"{name} {pattern!r} is not a valid regular expression ({err}); fix it (e.g. r'.*mlp\\.fc1') or escape "
            "literal characters with re.escape."
        ) from err


def choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {list(choices)}.")


def parse_override(raw) -> dict:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"override {raw!r} is not JSON ({err}); write it like "
                '\'{"regex": ".*attention.*", "pattern": "nm"}\'.'
            ) from err
    if not isinstance(raw, dict) or "regex" not in raw:
        raise ValueError(f"each override needs a 'regex' key, got {raw!r}; {_OVERRIDE_EXAMPLE}.")
    unknown = set(raw) - OVERRIDE_KEYS
    if unknown:
        raise ValueError(f"override keys {sorted(unknown)} are not supported; allowed: {sorted(OVERRIDE_KEYS)}.")
    out = dict(raw)
    check_regex("override regex", out["regex"])
    for name in ("n", "m"):
        check_number(f"override {name}", out.get(name), integral=True)
    check_number("override sparsity", out.get("sparsity"), integral=False)
    if "block_shape" in out:
        out["block_shape"] = int_list("override block_shape", out["block_shape"])
    return out


def check_speed_target(config) -> None:
    """Check ``target_speedup`` against ``pattern``, ``sparsity`` and ``budget``, the latency shape and
    ``width_multiple`` of a `SmartConfig` (types already checked).

    Args:
        config: the `SmartConfig` being validated (before its default sparsity is filled in).

    Raises:
        ValueError: naming the fix, for a target <= 1, a target with another pattern, with a sparsity or with a
            per-layer budget, a latency shape < 1 or a width multiple outside 1/8/16/32/64.
    """
    if config.width_multiple is not None and config.width_multiple not in WIDTH_MULTIPLES:
        raise ValueError(
            f"width_multiple must be one of {list(WIDTH_MULTIPLES)}, got {config.width_multiple}; e.g. 8 (CPU) or "
            "64 (GPU tensor cores), or 1 for no rounding."
        )
    if config.width_multiple not in (None, 1) and config.pattern != "coupled":
        raise ValueError(
            f"width_multiple={config.width_multiple} rounds coupled units per layer; use pattern='coupled' or drop "
            "width_multiple."
        )
    if config.latency_batch_size < 1 or config.latency_seq_len < 1:
        raise ValueError(
            f"latency_batch_size and latency_seq_len must be >= 1, got {config.latency_batch_size} and "
            f"{config.latency_seq_len}; e.g. 32 and 128."
        )
    target = config.target_speedup
    if target is None:
        return
    if config.pattern != "coupled":
        raise ValueError(
            f"target_speedup needs pattern='coupled' (whole FFN neurons, heads and channels are what makes a model "
            f"faster), got pattern={config.pattern!r}; set pattern='coupled' or give a sparsity instead."
        )
    if config.sparsity is not None:
        raise ValueError(
            f"give either sparsity ({config.sparsity}, a share of the MACs) or target_speedup ({target}, a measured "
            "speed-up), not both; drop one of them."
        )
    if not 1.0 < target < math.inf:
        raise ValueError(
            f"target_speedup must be > 1 (dense time / pruned time), got {target}; e.g. 2.0 for twice as fast."
        )
    if config.budget != "global":
        raise ValueError(
            "target_speedup spends one global budget of measured time over all layers; use budget='global' (or a "
            "sparsity with budget='layer')."
        )
