"""CNN slimming: remove pruned output channels of conv -> batch-norm -> act -> conv chains (ResNet).

A chain is two consecutive conv layers of one ``nn.Sequential`` (transformers' ``ResNetConvLayer``: ``convolution``,
``normalization``, ``activation``): producer ``A = act(BN_a(conv_a(x)))`` feeds consumer ``conv_b`` and nothing else.
The last conv of a residual block feeds the residual addition and is never a producer, nor are the shortcut and the
stem (their outputs have other consumers); their pruned channels stay zeros in place.

A pruned channel ``c`` of ``conv_a`` (weight rows all zero) outputs its bias ``b_c`` (0 without bias) everywhere, so
in eval mode ``A_c`` is the constant map ``a_c = act(gamma_c * (b_c - mean_c) / sqrt(var_c + eps) + beta_c)``.
Removing ``c`` (conv_a row, BN_a channel, conv_b input column) is exact when

* ``a_c == 0`` (e.g. ReLU of a non-positive constant): the channel adds nothing, whatever conv_b's padding; or
* conv_b has no padding: every output sees the full kernel, so the channel adds the constant
  ``delta = sum_{kh,kw} W_b[:, c, kh, kw] * a_c``, folded into conv_b's bias or, when conv_b has none and is followed
  by BN_b, into ``BN_b.running_mean -= delta`` (``BN(x + delta)`` with mean ``m`` equals ``BN(x)`` with ``m - delta``).

With zero padding and ``a_c != 0`` the contribution differs at the borders: those channels are kept (masked in place)
and reported. Chains are processed in forward order on the current weights, so a fold into BN_b is seen by the next
chain's constants. Only per-layer mode: ``ResNetConfig`` has one width per stage, no config rewrite can describe the
slim widths.
"""

from __future__ import annotations

import torch
from torch import nn

from ..metadata import set_layer_shape
from .surgery import layout_error_after_removal, replace_module, select_batchnorm, select_conv

__all__ = ["chain_candidates", "find_conv_chains", "pruned_channel_outputs", "slim_conv_chain"]

_CONV_LAYER_PARTS = {"convolution", "normalization", "activation"}


def _is_conv_layer(module: nn.Module) -> bool:
    children = dict(module.named_children())
    return (
        set(children) <= _CONV_LAYER_PARTS
        and type(children.get("convolution")) is nn.Conv2d
        and type(children.get("normalization")) is nn.BatchNorm2d
        and callable(getattr(module, "activation", None))
    )


def find_conv_chains(model: nn.Module) -> list[dict]:
    """Producer/consumer conv layers by structure, in forward order: ``{"conv", "norm", "act", "consumer",
    "consumer_norm"}`` (module names; ``act`` is the producer's activation callable)."""
    chains = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (name_a, layer_a), (name_b, layer_b) in zip(children, children[1:]):
            if _is_conv_layer(layer_a) and _is_conv_layer(layer_b):
                a, b = f"{name}.{name_a}" if name else name_a, f"{name}.{name_b}" if name else name_b
                chains.append(
                    {
                        "conv": f"{a}.convolution",
                        "norm": f"{a}.normalization",
                        "act": layer_a.activation,
                        "consumer": f"{b}.convolution",
                        "consumer_norm": f"{b}.normalization",
                    }
                )
    return chains


def _chain_error(model: nn.Module, chain: dict, layers: dict) -> str | None:
    conv, consumer = model.get_submodule(chain["conv"]), model.get_submodule(chain["consumer"])
    norm = model.get_submodule(chain["norm"])
    if conv.groups != 1 or consumer.groups != 1:
        return "grouped convolutions tie channels together"
    if not norm.track_running_stats:
        return f"{chain['norm']} normalises with batch statistics, so a pruned channel is not a known constant"
    return layout_error_after_removal(layers.get(chain["conv"]), "out", 1) or layout_error_after_removal(
        layers.get(chain["consumer"]), "in", 1
    )


def chain_candidates(model: nn.Module, layers: dict) -> tuple[list[dict], dict[str, str]]:
    """Chains whose pruned producer has all-zero output channels, plus ``{layer: reason}`` for pruned producers
    that cannot be slimmed (grouped conv, batch statistics, a layout the cut would break)."""
    candidates, notes = [], {}
    for chain in find_conv_chains(model):
        if chain["conv"] not in layers:
            continue
        error = _chain_error(model, chain, layers)
        if error:
            notes[chain["conv"]] = f"conv chain not slimmed: {error}"
        elif (model.get_submodule(chain["conv"]).weight.flatten(1) == 0).all(dim=1).any():
            candidates.append(chain)
    return candidates, notes


def pruned_channel_outputs(conv: nn.Conv2d, norm: nn.BatchNorm2d, act, channels: torch.Tensor) -> torch.Tensor:
    """The constant ``a_c = act(BN(b_c))`` that pruned channels ``channels`` of ``conv`` output in eval mode;
    shape ``(len(channels),)``, float64."""
    idx = channels.to(norm.running_mean.device)
    pre = conv.bias[idx].double() if conv.bias is not None else torch.zeros(len(idx), dtype=torch.float64)
    scale = (norm.running_var[idx].double() + norm.eps).rsqrt()
    if norm.affine:
        const = (pre.to(scale.device) - norm.running_mean[idx].double()) * scale * norm.weight[idx].double()
        const = const + norm.bias[idx].double()
    else:
        const = (pre.to(scale.device) - norm.running_mean[idx].double()) * scale
    return act(const.reshape(1, -1, 1, 1)).flatten()


def _fold_target(model: nn.Module, chain: dict) -> torch.Tensor | None:
    """conv_b's bias, or BN_b's running mean, or ``None`` when neither can absorb a constant."""
    consumer = model.get_submodule(chain["consumer"])
    padding = consumer.padding
    if padding != "valid" if isinstance(padding, str) else any(p != 0 for p in padding):
        return None  # zero padding: a constant map is not constant at the borders after the conv
    if consumer.bias is not None:
        return consumer.bias
    norm = model.get_submodule(chain["consumer_norm"])
    return norm.running_mean if norm.track_running_stats else None


@torch.no_grad()
def slim_conv_chain(model: nn.Module, chain: dict, layers: dict) -> dict:
    """Remove the exactly removable pruned channels of one chain in place (see module docstring); returns
    ``{"conv", "norm", "consumer", "before", "after", "folded", "kept_masked"}``."""
    conv, norm = model.get_submodule(chain["conv"]), model.get_submodule(chain["norm"])
    consumer = model.get_submodule(chain["consumer"])
    dead = (conv.weight.flatten(1) == 0).all(dim=1).cpu()
    dead_idx = dead.nonzero().flatten()
    constants = pruned_channel_outputs(conv, norm, chain["act"], dead_idx).cpu()
    target = _fold_target(model, chain)
    removable = torch.zeros_like(dead)
    removable[dead_idx] = (constants == 0) | (target is not None)
    if removable.all():  # keep one channel so conv_a / BN_a stay valid modules
        removable[0] = False
    folded = removable[dead_idx] & (constants != 0)
    if folded.any():
        weight = consumer.weight[:, dead_idx[folded].to(consumer.weight.device)].double()
        delta = (weight * constants[folded].to(weight.device).reshape(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        sign = 1.0 if target is consumer.bias else -1.0  # bias += delta; running_mean -= delta
        target.add_((sign * delta).to(target.dtype))
    keep = (~removable).nonzero().flatten()
    new_conv, new_consumer = select_conv(conv, out_idx=keep), select_conv(consumer, in_idx=keep)
    replace_module(model, chain["conv"], new_conv)
    replace_module(model, chain["norm"], select_batchnorm(norm, keep))
    replace_module(model, chain["consumer"], new_consumer)
    for name, module in ((chain["conv"], new_conv), (chain["consumer"], new_consumer)):
        if name in layers:
            set_layer_shape(layers, name, module.weight.shape)
    return {
        "conv": chain["conv"],
        "norm": chain["norm"],
        "consumer": chain["consumer"],
        "before": conv.out_channels,
        "after": len(keep),
        "folded": int(folded.sum()),
        "kept_masked": int((dead & ~removable).sum()),
    }


def resize_chain_for_load(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the channel count of a per-layer slim record (weights are loaded afterwards)."""
    keep = torch.arange(record["after"])
    replace_module(model, record["conv"], select_conv(model.get_submodule(record["conv"]), out_idx=keep))
    replace_module(model, record["norm"], select_batchnorm(model.get_submodule(record["norm"]), keep))
    replace_module(model, record["consumer"], select_conv(model.get_submodule(record["consumer"]), in_idx=keep))
