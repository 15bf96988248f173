"""Initial mask scores: magnitude, activation-aware, Fisher (coupled units) or constant (plus seeded noise).

Raw importance of a unit (shape conventions in `granularity`: canonical weight ``W3`` is ``(out, in, s)``):

* ``magnitude``: ``sqrt(mean_{w in unit} w^2)`` -- the unit's RMS, so units of different size compare fairly.
* ``activation``: ``sqrt(mean_{w in unit} (w * a_in)^2)`` with ``a_in`` the RMS of the layer's input feature (input
  channel for convs) over a calibration pass -- the Wanda importance ``|W_ij| * ||X_j||`` pooled per unit. This is how
  the scores use weight *and* activation information.
* ``fisher`` (coupled units only): ``log(I_u / c_u)``, the unit's empirical Fisher over a labelled calibration pass
  (`smart_hf.fisher`) per unit of budget cost -- the one importance here that compares across layers, so a global
  budget can take more units from the layers that matter less.
* ``constant``: zeros (only ``score_noise`` tells units apart; for ablations).

Normalisation, so that one temperature means the same everywhere: each layer's raw importances are divided by their
layer mean (layer-relative importance; not for ``fisher``, whose differences between layers are the point), then
every budget group is standardised to mean 0 and std 1.
Finally ``score_noise * N(0, 1)`` (seeded by ``config.score_seed``) is added. With ``tau_start="auto"`` each group
then gets its start temperature ``tau0`` and, under ``score_scale="start_temperature"`` (the default), its scores are
divided by ``tau0`` (the group temperature stays 1): the same masks, but a score learning rate is then a step of the
start logits ``m / tau0``, the same for every pattern and sparsity (docs/method.md §8).
"""

from __future__ import annotations

import torch
from torch import nn

from .core.granularity import canonical_weight

__all__ = [
    "all_reduce_each",
    "collect_activation_stats",
    "fisher_log_importance",
    "init_scores_",
    "to_device",
    "unit_importance",
]


def unit_importance(layer: nn.Module, input_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Raw importance of every unit of a prepared ``layer`` (``score_shape``, float32).

    ``input_sq``: mean squared input per input feature/channel (length ``in_features * groups`` for grouped convs),
    or ``None`` for plain magnitude.
    """
    layout = layer.smart_layout
    w3 = canonical_weight(layer.weight.detach().float(), layout.kind)
    sq = w3.square()
    if input_sq is not None:
        sq = sq * _input_sq_per_weight(layer, input_sq.to(sq.device).float())
    total = layout.unit_sum(sq)
    binding = layer.__dict__.get("_smart_coupled")
    if binding is not None and input_sq is None:  # a coupled unit's magnitude spans every layer it removes
        total = total + binding.partner_square_sums().reshape(total.shape).to(total.device)
        return (total / binding.unit_cost).sqrt()  # a constant scale: only the per-layer ranking matters
    return (total / layout.unit_cost).sqrt()


def fisher_log_importance(layer: nn.Module, fisher: torch.Tensor) -> torch.Tensor:
    """``log(I_u / c_u)``: a coupled unit's Fisher importance (`smart_hf.fisher.unit_fisher`) per unit of its budget
    cost ``c_u`` (MACs, or measured nanoseconds with a speed target), so that the global top-k keeps the units of
    most loss per cost; units with no measurable Fisher (below ``1e-6`` of the layer's largest) are floored there.

    Args:
        layer: a prepared coupled owner layer.
        fisher: its ``(units,)`` Fisher importances.

    Returns:
        ``(units,)`` float32 log importances, in ``score_shape``.
    """
    fisher = fisher.float().cpu()
    floored = fisher.clamp_min(max(float(fisher.max()) * 1e-6, 1e-30))
    cost = float(layer.__dict__["_smart_coupled"].unit_cost)
    return (floored / cost).log().reshape(layer.smart_layout.score_shape)


def _input_sq_per_weight(layer: nn.Module, input_sq: torch.Tensor) -> torch.Tensor:
    """Broadcast per-input-feature statistics onto the canonical weight ``(out, in, s)``."""
    groups = getattr(layer, "groups", 1)
    if groups == 1:
        return input_sq.reshape(1, -1, 1)
    out = layer.smart_layout.out_features
    per_group = input_sq.reshape(groups, -1)  # (groups, in/groups)
    return per_group.repeat_interleave(out // groups, 0).unsqueeze(-1)  # output o reads input group o // (out/groups)


@torch.no_grad()
def collect_activation_stats(model: nn.Module, modules: list[nn.Module], batches, max_batches: int) -> list:
    """Mean squared input per input feature of each module over ``max_batches`` batches of ``batches``.

    Runs the model in eval mode under ``no_grad``. Under torch.distributed the sums and counts are all-reduced, so
    every rank gets the same statistics (and therefore the same initial scores).
    """
    sums = [None] * len(modules)
    counts = torch.zeros(len(modules), dtype=torch.float64)

    def make_hook(i):
        def hook(module, args):
            x = args[0].detach().double()
            feat_dim = 1 if isinstance(module, nn.Conv2d) else -1
            x = x.movedim(feat_dim, -1).reshape(-1, x.shape[feat_dim])
            sums[i] = x.square().sum(0).cpu() + (0 if sums[i] is None else sums[i])
            counts[i] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(make_hook(i)) for i, m in enumerate(modules)]
    was_training = model.training
    model.eval()
    try:
        seen = 0
        for batch in batches:
            if seen >= max_batches:
                break
            model(**to_device(batch, _device_of(model)))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0 or any(s is None for s in sums):
        raise ValueError(
            "calibration_data produced no batches reaching the targeted layers; pass a non-empty "
            "iterable of model input dicts."
        )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sums = all_reduce_each(sums)
        counts = all_reduce_each([counts])[0]
    return [(s / counts[i]).float() for i, s in enumerate(sums)]


def all_reduce_each(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over the ranks of the initialised process group.

    Args:
        tensors: CPU tensors, the same shapes on every rank.

    Returns:
        The summed tensors, on the CPU.
    """
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    out = []
    for t in tensors:
        buf = t.to(device)
        dist.all_reduce(buf)
        out.append(buf.cpu())
    return out


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_device(batch, device):
    """``batch`` with every tensor moved to ``device``.

    Args:
        batch: a dict of model inputs.
        device: the target device.

    Returns:
        The moved dict.

    Raises:
        ValueError: when ``batch`` is not a dict.
    """
    if isinstance(batch, dict):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    raise ValueError(f"calibration batches must be dicts of model inputs, got {type(batch).__name__}.")


@torch.no_grad()
def init_scores_(state, config, act_stats: list | None = None) -> None:
    """Fill every layer's ``smart_scores`` in place (see module docstring for the formula)."""
    layers = state.layers
    generator = torch.Generator().manual_seed(int(config.score_seed))
    for group in state.groups:
        raw = []
        for layer in group.layers:
            if config.score_init == "constant":
                raw.append(torch.zeros(layer.smart_layout.score_shape))
                continue
            stats = None if act_stats is None else act_stats[layers.index(layer)]
            if config.score_init == "fisher":  # comparable across layers: no layer-relative scaling
                raw.append(fisher_log_importance(layer, stats))
                continue
            imp = unit_importance(layer, stats).cpu()
            raw.append(imp / imp.mean().clamp_min(1e-12))
        flat = torch.cat([r.reshape(-1) for r in raw])
        std = flat.std() if flat.numel() > 1 else torch.tensor(0.0)
        flat = (flat - flat.mean()) / std if std > 1e-12 else flat - flat.mean()
        if config.score_noise > 0:
            flat = flat + config.score_noise * torch.randn(flat.shape, generator=generator)
        for layer, piece in zip(group.layers, torch.split(flat, [r.numel() for r in raw])):
            layer.smart_scores.copy_(piece.reshape(layer.smart_layout.score_shape))
    if config.tau_start is None:  # "auto": each group starts where its mask has the target fractionality
        taus = state.calibrate_temperatures_(config.tau_start_fractionality)
        if config.score_scale == "start_temperature":
            # the same masks (f depends on m / tau only), but an optimizer step on the scores now moves m / tau0 alike
            # in every group: in standardised units one LR is ~5x harsher on 2:4 (tau0 ~0.05) than on 4x4 at 90%
            for group, tau in zip(state.groups, taus):
                for layer in group.layers:
                    layer.smart_scores.div_(tau)
            state.set_group_temperatures([1.0] * len(taus))
