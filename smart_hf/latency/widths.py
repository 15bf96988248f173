"""Width rounding of a prepared model's coupled layers: the one call the hard masks of a global group go through.

The arithmetic is `smart_hf.core.widths.round_widths` (pure, tested); this module only reads the prepared layers
(scores, `CoupledBinding` kind and unit cost) and the config's width multiple.
"""

from __future__ import annotations

import torch

from ..core.widths import round_widths

__all__ = ["resolved_width_multiple", "round_group_widths"]


def resolved_width_multiple(config, device: torch.device) -> int:
    """The width multiple a prepared model rounds its coupled FFN / conv widths to.

    ``config.width_multiple`` when set; else, with ``target_speedup``, 8 on CPU (oneDNN / MKL GEMMs vectorise over
    8 floats; a measured choice per device proved too noisy on a shared machine to beat a fixed rule) and 64 on CUDA
    (tensor-core tiles); with a ``sparsity`` budget, 1 (the exact cost budget, as before width rounding existed).

    Args:
        config: the model's `SmartConfig`.
        device: the device the model runs on.

    Returns:
        The multiple (1 = no rounding).
    """
    if config.width_multiple is not None:
        return int(config.width_multiple)
    if getattr(config, "target_speedup", None) is None:
        return 1
    return 64 if torch.device(device).type == "cuda" else 8


def round_group_widths(group, masks: list[torch.Tensor], config) -> list[torch.Tensor]:
    """The hard masks of a global budget group with every coupled FFN / conv layer's kept count rounded to the
    width multiple (`resolved_width_multiple`; heads are whole heads / GQA groups already) by
    `smart_hf.core.widths.round_widths`, the group's cost kept closest to its budget ``group.k``.

    Args:
        group: the budget group (``layers``, ``k``, ``reserved``), global kind.
        masks: its hard masks, one per layer in ``group.layers`` order (unit-space shapes).
        config: the model's `SmartConfig`.

    Returns:
        The rounded masks (the same list when nothing is rounded: no coupled layer or a multiple of 1).
    """
    bindings = [layer.__dict__.get("_smart_coupled") for layer in group.layers]
    if not masks or any(b is None for b in bindings):
        return masks
    multiple = resolved_width_multiple(config, masks[0].device)
    if multiple <= 1:
        return masks
    multiples = [multiple if b.cset.kind in ("ffn", "conv") else 1 for b in bindings]
    scores = [layer.smart_scores.detach().reshape(-1) for layer in group.layers]
    minimums = [max(int(q), 1) for q in (group.reserved or [1] * len(masks))]
    flat = [m.reshape(-1) for m in masks]
    rounded = round_widths(scores, flat, multiples, [float(b.unit_cost) for b in bindings], group.k, minimums)
    return [r.reshape(m.shape) for r, m in zip(rounded, masks)]
