"""`slim`: physically remove pruned units, so a pruned model is smaller and faster -- with outputs equal to the
masked model's (eval mode).

Three kinds of units are removed (the exactness argument of each is in its module):

* FFN channels (`smart_hf.slim_ffn`): rows of fc1 and columns of fc2; the constant a pruned channel still emits,
  ``act(b_j)``, is folded into fc2's bias.
* Attention heads (`smart_hf.slim_heads`): heads whose value rows (or output-projection columns) are all pruned; the
  constant ``W_o[:, h] @ b_v[h]`` is folded into o's bias. `head_pruning_overrides` makes heads the pruning units.
* CNN channels (`smart_hf.slim_cnn`): output channels of conv -> BN -> act -> conv chains (ResNet bottleneck and
  basic blocks); the constant map a pruned channel leaves is folded into the next conv's bias / BN mean where that is
  exact, channels whose constant would differ at zero-padded borders are kept and reported.

Two modes:

* ``"uniform"`` (default): one size per kind for the whole model, written into the config so stock
  ``from_pretrained`` loads the slim model: ``intermediate_size`` (every FFN keeps the largest kept count; layers that
  kept fewer keep some pruned channels, which stays exact) and, for attention that reads ``config.head_dim`` (ViT,
  DeiT), ``num_attention_heads`` with ``head_dim`` pinned (same padding rule). BERT heads (head size derived from
  ``hidden_size / num_attention_heads``) and CNN chains (``ResNetConfig`` has per-stage widths only) cannot be
  expressed this way: uniform mode leaves them masked (reported) and raises when nothing else is slimmable.
* ``"per_layer"``: every layer keeps exactly its own units. The sizes are recorded in ``config.smart_hf["slim"]``
  (``pairs``, ``heads``, ``convs``, ``coupled``). For BERT, RoBERTa, ViT, DeiT, GPT-2 and Llama-style models the
  config also records every resized layer's shape and points (``auto_map``) at a static modeling file that
  ``save_pretrained`` copies into the folder (`smart_hf.slim.portable`): stock
  ``AutoModelFor....from_pretrained(folder, trust_remote_code=True)`` loads it without smart_hf. Any per-layer
  artifact loads with `load_slim`.

Pruned units that are not removed stay zeros in place (fc2 / output projections and the last conv of a residual block
feed the residual stream; q/k channels of kept heads; border-inexact conv channels); `slim` returns them under
``"left_masked"``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..lifecycle import is_prepared, squash
from ..metadata import PruningMetadata, set_layer_shape, slim_summary, with_slim
from ..metadata import require as require_metadata
from ..metadata import write as write_metadata
from .cnn import chain_candidates, slim_conv_chain
from .coupled import coupled_widths, slim_coupled
from .ffn import apply_ffn, plan_ffn, uniform_ffn_size
from .heads import apply_heads, plan_heads, uniform_heads_error
from .portable import make_portable

logger = logging.getLogger(__name__)

__all__ = ["MODES", "slim", "slimmed_widths"]

MODES = ("uniform", "per_layer")
_DEFAULT_REASON = "its outputs feed a residual addition or a consumer slim does not handle"


def _slim_metadata(model: nn.Module) -> PruningMetadata:
    """A copy of ``config.smart_hf`` of a squashed, not yet slimmed SMART model (a prepared model is squashed
    first); `slim` edits the copy and writes it back only once every layer is resized."""
    if is_prepared(model):
        squash(model)
    meta = require_metadata(model, "slim (prune with pattern='channel' first)")
    if slim_summary(meta):
        raise ValueError("this model is already slim; slim the squashed (unslimmed) model instead.")
    return meta


def _uniform_scope(model, ffn_plans, head_plans, chains, notes) -> tuple[int | None, int | None]:
    """Uniform mode: the kept FFN size and head count (``None``: that kind is not slimmed). Heads and chains that a
    config rewrite cannot describe are moved to ``notes``; raises when nothing would be slimmed."""
    ffn_target = uniform_ffn_size(ffn_plans, model.config) if ffn_plans else None
    head_target, heads_error = None, uniform_heads_error(model, head_plans) if head_plans else None
    if head_plans and heads_error is None:
        head_target = max(max(int((~p["removable"]).sum()) for p in head_plans), 1)
    for plan in head_plans if heads_error else []:
        notes[plan["v"]] = f"uniform slimming cannot rewrite the head count ({heads_error}); use mode='per_layer'"
    for chain in chains:
        notes[chain["conv"]] = (
            "uniform slimming cannot rewrite per-conv widths (per-stage config); use mode='per_layer'"
        )
    if ffn_target is None and head_target is None and (head_plans or chains):
        raise ValueError(
            "uniform slimming rewrites config sizes, which cannot describe these slim layers ("
            + (heads_error or "CNN conv chains: ResNetConfig has per-stage widths only")
            + "); use slim(model, mode='per_layer') and load with smart_hf.load_slim."
        )
    return ffn_target, head_target


@torch.no_grad()
def slim(model: nn.Module, mode: str = "uniform") -> dict:
    """Remove the pruned FFN channels, attention heads and CNN chain channels in place (a prepared model is squashed
    first); returns ``{"mode", "pairs": [{"fc1", "fc2", "before", "after"}], "heads": [{"attention", "q", "k", "v",
    "o", "head_dim", "before", "after"}], "convs": [{"conv", "norm", "consumer", "before", "after", "folded",
    "kept_masked"}], "left_masked": [{"name", "reason"(, "channels")}], "params_before", "params_after",
    "params_removed", "loading"}``. The summary without ``left_masked`` is also recorded in
    ``model.config.smart_hf["slim"]``.

    ``"per_layer"`` slim models of BERT, RoBERTa, ViT, DeiT, GPT-2 and Llama-style families also get a config that
    stock ``AutoModelFor....from_pretrained(folder, trust_remote_code=True)`` loads without smart_hf
    (`smart_hf.slim.portable`; ``"loading": "trust_remote_code"``); other families load with `load_slim`
    (``"loading": "load_slim"``). Uniform coupled slimming that keeps pruned units (layers kept different counts, or
    a config that cannot describe a kind) logs a warning with the counts.

    Args:
        model: a SMART model (prepared, squashed, or a squashed artifact loaded back), not yet slimmed.
        mode: ``"uniform"`` (stock-loadable config sizes) or ``"per_layer"`` (every layer its own widths).

    Returns:
        The summary described above.

    Raises:
        ValueError: an unknown ``mode``, a model that is already slim or has nothing to slim, or uniform slimming
            that no config rewrite can describe.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    meta = with_slim(_slim_metadata(model), {})  # a private copy: layer shapes are edited in place below
    if meta.get("coupled"):
        return _slim_coupled(model, meta, mode)
    config, layers = model.config, meta["layers"]
    params_before = sum(p.numel() for p in model.parameters())
    ffn_plans, head_plans, chains, notes = _slim_plans(model, layers)
    ffn_target = head_target = None
    if mode == "uniform":
        ffn_target, head_target = _uniform_scope(model, ffn_plans, head_plans, chains, notes)
        head_plans, chains = (head_plans if head_target else []), []
    handled = {p["fc1"] for p in ffn_plans} | {p["v"] for p in head_plans}
    pairs = [apply_ffn(model, plan, layers, ffn_target) for plan in ffn_plans]
    heads = [apply_heads(model, plan, layers, head_target) for plan in head_plans]
    convs = [slim_conv_chain(model, chain, layers) for chain in chains]
    left = _left_masked(layers, notes, handled, convs)
    if ffn_target is not None:
        config.intermediate_size = ffn_target
    if head_target is not None:
        config.num_attention_heads, config.head_dim = head_target, head_plans[0]["head_dim"]
    summary = {"mode": mode, "pairs": pairs, "heads": heads, "convs": convs}
    _record_summary(model, meta, summary, params_before)
    for entry in left:
        logger.info("smart_hf: slim left %s masked in place (%s)", entry["name"], entry["reason"])
    return {**summary, "left_masked": left}


def _slim_plans(model: nn.Module, layers: dict) -> tuple[list, list, list, dict]:
    """``(FFN plans, head plans, conv chains, notes)``: what can be slimmed, and why the rest cannot (per layer);
    raises ValueError naming the fix when nothing can."""
    ffn_plans, notes = plan_ffn(model, layers)
    head_plans, head_notes = plan_heads(model, layers)
    chains, chain_notes = chain_candidates(model, layers)
    notes.update(head_notes)
    notes.update(chain_notes)
    if not (ffn_plans or head_plans or chains):
        raise ValueError(
            "nothing to slim: no FFN input projection is channel-pruned, no attention head has all value rows "
            "pruned and no conv -> BN -> conv chain has pruned channels. Prune with SmartConfig(pattern='channel') "
            "(and head_pruning_overrides(model) for heads) so that these layers are targeted."
        )
    return ffn_plans, head_plans, chains, notes


def _slim_coupled(model: nn.Module, meta: PruningMetadata, mode: str) -> dict:
    """`slim` of a ``pattern="coupled"`` model (`smart_hf.slim.coupled`): summary ``{"mode", "coupled": [{"set",
    "after"}], "config": {changed config attributes}, "params_*"}``."""
    params_before = sum(p.numel() for p in model.parameters())
    done, left, changes = slim_coupled(model, meta["coupled"], mode)
    for record in meta["coupled"]:  # a conv owner can also lose rows as the producer of the next set
        owner, entry = record["set"]["owner"], meta["layers"].get(record["set"]["owner"])
        if entry is not None:
            set_layer_shape(meta["layers"], owner, model.get_submodule(owner).weight.shape)
            out_axis = 1 if entry["kind"] == "conv1d" else 0  # its blocks span every output row
            entry["block_shape"] = [entry["shape"][out_axis], entry["block_shape"][1]]
    summary = {"mode": mode, "pairs": [], "heads": [], "convs": [], "coupled": done, "config": changes}
    _record_summary(model, meta, summary, params_before)
    if mode == "uniform":
        _warn_uniform_kept(model, summary, left)
    return {**summary, "left_masked": left}


def _record_summary(model: nn.Module, meta: PruningMetadata, summary: dict, params_before: int) -> None:
    """Complete ``summary`` (parameter counts, how it loads) and record it in ``model.config.smart_hf["slim"]``."""
    params_after = sum(p.numel() for p in model.parameters())
    summary.update(params_before=params_before, params_after=params_after, params_removed=params_before - params_after)
    _record_loading(model, summary)
    write_metadata(model, with_slim(meta, summary))


def _record_loading(model: nn.Module, summary: dict) -> None:
    """``summary["loading"]``: how the artifact loads -- ``"stock"`` (uniform), ``"trust_remote_code"`` (per-layer,
    the shipped modeling file, `smart_hf.slim.portable`) or ``"load_slim"`` (per-layer, a family that file does not
    cover; the reason in ``summary["loading_note"]``)."""
    if summary["mode"] == "uniform":
        summary["loading"] = "stock"
        return
    problem = make_portable(model, summary)
    summary["loading"] = "load_slim" if problem else "trust_remote_code"
    if problem:
        summary["loading_note"] = problem


def _warn_uniform_kept(model: nn.Module, summary: dict, left: list[dict]) -> None:
    """Uniform slimming keeps every set at the largest kept count of its kind: with a global budget the layers keep
    different counts, and the padding units stay as zeros. Say how much was kept that the masks had pruned."""
    kept_zero = sum(
        int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, Conv1D))
    )
    units = [(r["set"]["kind"], r["set"]["units"], r["after"]) for r in summary["coupled"]]
    lines = [
        f"{kind}: {sum(a for k, _, a in units if k == kind)}/{sum(u for k, u, _ in units if k == kind)} units kept"
        for kind in sorted({k for k, _, _ in units})
    ]
    if left:
        lines.append(f"{len(left)} set(s) left masked in place, every unit kept ({left[0]['reason']})")
    if kept_zero or left:
        logger.warning(
            "smart_hf: uniform slimming kept %s parameters (%s of them zero): one width per kind, the largest any "
            "layer kept, so layers that kept fewer keep pruned units as zeros; %s. For a smaller, faster model use "
            "slim(model, mode='per_layer') (loads with trust_remote_code=True or smart_hf.load_slim), or prune with "
            "budget='layer' so every layer keeps the same count.",
            f"{summary['params_after']:,}",
            f"{kept_zero:,}",
            "; ".join(lines) or "no unit removed",
        )


def _left_masked(layers: dict, notes: dict, handled: set, convs: list[dict]) -> list[dict]:
    """Pruned layers whose pruned units (some or all) stay zeros in place, with the reason (and, for conv chains,
    how many channels)."""
    partial = {c["conv"]: c for c in convs if c["kept_masked"]}
    done = {c["conv"] for c in convs if not c["kept_masked"]}
    left = []
    for name, info in layers.items():
        if name in partial:
            record = partial[name]
            reason = (
                f"{record['kept_masked']} pruned channel(s) output a non-zero constant act(BN(b)) and "
                f"{record['consumer']} is zero-padded: the constant is not exact at the borders"
            )
            left.append({"name": name, "reason": reason, "channels": record["kept_masked"]})
        elif name in notes and name not in done:
            left.append({"name": name, "reason": notes[name]})
        elif info["pattern"] == "channel" and name not in handled | done:
            left.append({"name": name, "reason": _DEFAULT_REASON})
    return left


def slimmed_widths(slim_meta: dict) -> dict[str, dict[str, tuple[int, int]]]:
    """Which layers `slim` resized and how: ``{layer name: {"out": (before, after), "in": (before, after)}}`` with
    only the changed axes, counted in rows / input columns (for convs: channels). Built from the summary recorded in
    ``config.smart_hf["slim"]``: fc1 rows and fc2 columns; q/k/v rows and o columns (``heads * head_dim``); conv
    rows and the consumer conv's input channels. For bookkeeping that needs the pre-slim geometry (budgets).

    Args:
        slim_meta: ``config.smart_hf["slim"]`` of a slim model.

    Returns:
        The changed axes per layer name, as described above.
    """
    widths: dict[str, dict[str, tuple[int, int]]] = {}
    for pair in slim_meta.get("pairs", []):
        widths.setdefault(pair["fc1"], {})["out"] = (pair["before"], pair["after"])
        widths.setdefault(pair["fc2"], {})["in"] = (pair["before"], pair["after"])
    for block in slim_meta.get("heads", []):
        change = (block["before"] * block["head_dim"], block["after"] * block["head_dim"])
        for key in ("q", "k", "v"):
            widths.setdefault(block[key], {})["out"] = change
        widths.setdefault(block["o"], {})["in"] = change
    for chain in slim_meta.get("convs", []):
        widths.setdefault(chain["conv"], {})["out"] = (chain["before"], chain["after"])
        widths.setdefault(chain["consumer"], {})["in"] = (chain["before"], chain["after"])
    for name, change in coupled_widths(slim_meta.get("coupled", [])).items():
        widths.setdefault(name, {}).update(change)
    return widths
