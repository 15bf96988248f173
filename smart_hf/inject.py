"""Finding the layers to prune and attaching SMART to a model (`prepare_model`).

Targeting follows PEFT's rules, which HF users already know:

* ``target_modules`` (list): a module matches when its name equals an entry or ends with ``"." + entry``;
* ``target_regex`` (str): ``re.fullmatch`` on the module name;
* ``exclude_modules`` (list): exact-or-suffix, always wins;
* default: every ``nn.Linear``, ``nn.Conv2d`` and transformers ``Conv1D`` except embeddings (any name part containing
  ``embed``), the output embeddings and task heads (name parts such as ``classifier``, ``lm_head``, ``score``,
  ``qa_outputs``, ``decode_head``, ``bbox_predictor``).
"""

from __future__ import annotations

import logging
import re

import torch
from torch import nn

from .config import SmartConfig, UnitSettings
from .constants import CALIBRATED_SCORE_INITS, MASK_NAME, SCORES_NAME, STATE_MODULE_NAME, first_items
from .core.granularity import UnitLayout, layer_kind
from .coupled_owners import bind_owners, coupled_targets
from .fisher import unit_fisher
from .latency import apply_speed_budget, measure_for_prepare
from .layers import attach_smart_layer, detach_smart_layer, is_smart_layer
from .scores import collect_activation_stats, init_scores_
from .state import SmartState, build_groups

logger = logging.getLogger(__name__)

__all__ = ["adapter_module_names", "check_smart_shapes", "find_targets", "prepare_model", "unit_settings_for"]

HEAD_NAME_PARTS = frozenset(
    {
        "classifier",
        "cls_classifier",
        "distillation_classifier",
        "lm_head",
        "score",
        "qa_outputs",
        "decode_head",
        "class_labels_classifier",
        "bbox_predictor",
        "pooler_head",
        "head",
    }
)


def adapter_module_names(model: nn.Module) -> list[str]:
    """Names of the PEFT adapter layers (LoRA & co.) in ``model``, recognised by PEFT's layer interface
    (``get_base_layer`` and ``active_adapters``) rather than by importing peft, an optional dependency."""
    return [
        name
        for name, module in model.named_modules()
        if callable(getattr(type(module), "get_base_layer", None)) and hasattr(type(module), "active_adapters")
    ]


def _matches(name: str, entries: list[str] | None) -> bool:
    return bool(entries) and any(name == e or name.endswith("." + e) for e in entries)


def _is_default_target(model: nn.Module, name: str, module: nn.Module) -> bool:
    parts = name.split(".")
    if any("embed" in p for p in parts) or HEAD_NAME_PARTS.intersection(parts):
        return False
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    return module is not out_emb


def _selected(model: nn.Module, name: str, module: nn.Module, config: SmartConfig) -> tuple[bool, bool]:
    """(selected, named explicitly by the user)."""
    if _matches(name, config.exclude_modules):
        return False, False
    if config.target_modules is not None:
        hit = _matches(name, config.target_modules)
        return hit, hit
    if config.target_regex is not None:
        hit = re.fullmatch(config.target_regex, name) is not None
        return hit, hit
    return _is_default_target(model, name, module), False


def unit_settings_for(name: str, config: SmartConfig) -> UnitSettings:
    """The unit settings (pattern, block shape, n:m, sparsity) ``config`` assigns to module ``name``: its one matching
    override merged over the top-level fields, or the top-level fields alone."""
    hits = [o for o in config.overrides or [] if re.fullmatch(o["regex"], name)]
    if len(hits) > 1:
        raise ValueError(
            f"module {name!r} matches several overrides {[h['regex'] for h in hits]}; make the "
            "override regexes disjoint."
        )
    return config.unit_settings(hits[0] if hits else None)


def find_targets(model: nn.Module, config: SmartConfig) -> list[tuple[str, nn.Module, UnitLayout, float]]:
    """The modules `prepare_model` would prune, as ``(name, module, layout, sparsity)``.

    A selected module whose dims do not divide the block (or ``m``) is skipped with a warning naming it, or raises if
    the user named it explicitly; an explicitly named module of an unsupported type raises too. With
    ``pattern="coupled"`` the targets are the owners (consumers) of the coupled sets (`smart_hf.coupling`).

    Args:
        model: the model to search.
        config: what to prune (targets, pattern, overrides).

    Returns:
        ``[(name, module, layout, sparsity)]`` in model order.

    Raises:
        ValueError: nothing matched (naming why), or an explicitly named module is unsupported or not divisible.
    """
    if config.pattern == "coupled":
        chosen = coupled_targets(model, lambda name, module: _selected(model, name, module, config)[0])
        return [(name, module, layout, config.sparsity) for name, module, layout in chosen]
    targets, skipped = [], []
    for name, module in model.named_modules():
        if name == "" or name.split(".")[-1] == STATE_MODULE_NAME:
            continue
        selected, explicit = _selected(model, name, module, config)
        if not selected:
            continue
        kind = layer_kind(module)
        if kind is None:
            if explicit and not list(module.children()):  # a named leaf we cannot mask; containers just pass
                raise ValueError(
                    f"module {name!r} ({type(module).__name__}) cannot be pruned: smart_hf supports "
                    "nn.Linear, nn.Conv2d and transformers' Conv1D; remove it from target_modules."
                )
            continue
        settings = unit_settings_for(name, config)
        layout = UnitLayout(
            kind, tuple(module.weight.shape), settings.pattern, tuple(settings.block_shape), settings.n, settings.m
        )
        problem = layout.divisibility_error()
        if problem:
            if explicit:
                raise ValueError(f"cannot prune {name!r}: {problem}; choose a block/m that divides it or exclude it.")
            logger.warning("smart_hf: skipping %s: %s", name, problem)
            skipped.append(f"{name}: {problem}")
            continue
        targets.append((name, module, layout, settings.sparsity))
    _check_overrides_used(config, [t[0] for t in targets])
    if not targets:
        raise ValueError(_no_target_message(model, skipped))
    return targets


def _no_target_message(model: nn.Module, skipped: list[str]) -> str:
    """Why nothing is left to prune, with the fix: no supported layer at all, every selected layer indivisible by
    the unit, or targets that match no name."""
    if not any(layer_kind(m) for m in model.modules()):
        return (
            f"{type(model).__name__} has no layer smart_hf can prune (nn.Linear, nn.Conv2d or transformers' Conv1D); "
            "pass a model that has some, or prune its linear sub-model."
        )
    if skipped:
        return (
            f"every selected module was skipped because the unit does not divide it ({'; '.join(skipped[:3])}"
            f"{'; ...' if len(skipped) > 3 else ''}); choose a block_shape (or m) that divides the layer dims."
        )
    return (
        "no module matched the SmartConfig targets (target_modules / target_regex / defaults); "
        "print([n for n, _ in model.named_modules()]) to see the names and adjust the targets."
    )


def _check_overrides_used(config: SmartConfig, names: list[str]) -> None:
    for override in config.overrides or []:
        if not any(re.fullmatch(override["regex"], n) for n in names):
            logger.warning("smart_hf: override regex %r matched no targeted module", override["regex"])


def prepare_model(model: nn.Module, config: SmartConfig, calibration_data=None) -> nn.Module:
    """Attach SMART to ``model`` in place and return it.

    Adds a ``smart_scores`` parameter (and a ``smart_mask`` buffer) to every targeted layer, a ``smart_state``
    sub-module holding temperature and stage, and forward hooks that compute the masks once per forward. Scores
    are initialised from ``config.score_init``; ``"activation"`` and ``"fisher"`` need ``calibration_data``, an
    iterable of model input batches (dicts; with ``labels`` for ``"fisher"``), read before the scores are set.

    With ``config.target_speedup`` a latency model is measured first (on the model's device and dtype, or read from
    the cache; `smart_hf.latency`), every coupled unit's budget cost becomes its measured marginal time and the
    global budget keeps ``dense time / target``; the solved budget is ``get_smart_state(model).speed_target``.

    Args:
        model: the model to prune (a ``torch.nn.Module``, typically a transformers model).
        config: what to prune and how.
        calibration_data: input batches for ``score_init="activation"`` or ``"fisher"`` (with labels).

    Returns:
        ``model``, prepared.

    Raises:
        TypeError: for a model that is not a ``torch.nn.Module``.
        ValueError: naming the fix -- no target, an already prepared model, PEFT adapters, NaN weights, missing
            calibration data, a budget the guard cannot honour, or a speed target out of reach (the largest
            reachable speed-up named). The model is left unchanged.
    """
    _check_can_prepare(model, config)
    targets = find_targets(model, config)
    for name, module, _, _ in targets:
        if not torch.isfinite(module.weight).all():
            raise ValueError(f"weights of {name!r} contain NaN or Inf; fix the checkpoint before pruning.")
    act_stats = _activation_stats(model, config, targets, calibration_data)
    # a speed target times the dense model before SMART is attached (or reads its cached latency model)
    latency = measure_for_prepare(model, config, [t[0] for t in targets]) if config.target_speedup else None
    layers = [attach_smart_layer(module, layout) for _, module, layout, _ in targets]
    try:  # a budget the guard cannot honour raises here: leave the model exactly as it came
        _install_state(model, config, targets, layers, act_stats, latency, calibration_data)
    except Exception:
        _undo_prepare(model, layers)
        raise
    return model


def _check_can_prepare(model, config) -> None:
    """Refuse, naming the fix, what `prepare_model` cannot prepare: not a module, no `SmartConfig`, a model already
    prepared or carrying PEFT adapters."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"prepare_model needs a torch.nn.Module (e.g. a transformers model), got {type(model).__name__}; load "
            "it first, e.g. AutoModelForImageClassification.from_pretrained(...)."
        )
    if not isinstance(config, SmartConfig):
        raise ValueError(
            f"prepare_model needs a SmartConfig, got {type(config).__name__}; build one with SmartConfig(...) "
            "(from a dict: SmartConfig(**d))."
        )
    if hasattr(model, STATE_MODULE_NAME):
        raise ValueError("model is already prepared for SMART; call squash(model) first or start from a fresh model.")
    adapters = adapter_module_names(model)
    if adapters:  # the default targets would include the adapters' own Linear layers
        raise ValueError(
            f"model already has PEFT adapters ({adapters[0]}, ...); SMART would prune the adapters themselves. "
            "Prepare the base first, then add LoRA: model = prepare_model(base, config); "
            "model = smart_hf.integrations.peft.get_peft_model(model, lora_config)."
        )


def _activation_stats(model: nn.Module, config: SmartConfig, targets: list, calibration_data) -> list | None:
    """The calibration pass of ``score_init="activation"`` over the targeted modules (``None`` for other inits;
    ``"fisher"`` is measured once the coupled units are bound, `_install_state`: only its batches are checked here)."""
    if config.score_init not in CALIBRATED_SCORE_INITS:
        return None
    if calibration_data is None:
        with_labels = " with labels" if config.score_init == "fisher" else ""
        raise ValueError(
            f"score_init={config.score_init!r} needs calibration_data (an iterable of input batches{with_labels}); "
            "pass it to prepare_model or use score_init='magnitude'."
        )
    if config.score_init == "fisher":
        return None
    return collect_activation_stats(model, [m for _, m, _, _ in targets], calibration_data, config.calibration_batches)


def _install_state(model, config: SmartConfig, targets: list, layers: list, act_stats, latency, calibration_data) -> None:
    """Build the budget groups and the `SmartState`, register the hooks and initialise the scores."""
    sparsities, speed = [t[3] for t in targets], None
    if config.pattern == "coupled":  # before the groups: a coupled unit's budget cost spans its partners
        bind_owners(model, [t[0] for t in targets], layers, config.coupled_tokens)
    if latency is not None:  # unit costs become measured time; the budget spends dense time / target
        speed = apply_speed_budget(layers, [t[0] for t in targets], latency, config)
        sparsities = [speed["sparsity"]] * len(targets)
    state = SmartState(config, build_groups(layers, sparsities, config.budget, config.min_layer_density))
    state.speed_target = speed  # the solved time budget (None for a sparsity budget); `speed_target_record`
    # state.layers is in budget-group order, which differs from model order once N:M/per-layer groups mix with a
    # global one: keep the names (and the activation statistics) aligned with state.layers, not with `targets`
    position = {id(layer): i for i, layer in enumerate(layers)}
    state.targeted_module_names = [targets[position[id(layer)]][0] for layer in state.layers]
    if act_stats is not None:
        act_stats = [act_stats[position[id(layer)]] for layer in state.layers]
    model.add_module(STATE_MODULE_NAME, state.to(layers[0].weight.device))
    for layer in layers:
        object.__setattr__(layer, "_smart_state", state)
    state.hook_handles = [
        model.register_forward_pre_hook(state.begin_forward),
        model.register_forward_hook(state.end_forward, always_call=True),  # also after a forward that raised
        model.register_load_state_dict_pre_hook(check_smart_shapes),  # removed by squash with the others
    ]
    if config.score_init == "fisher":  # per coupled unit: needs the bindings; on the dense network
        mode = state.mode_name
        state.set_mode("dense")
        act_stats = unit_fisher(model, state.layers, calibration_data, config.calibration_batches)
        state.set_mode(mode)
    init_scores_(state, config, act_stats)


def check_smart_shapes(model: nn.Module, state_dict, prefix: str, _metadata, strict: bool, *_args) -> None:
    """Load pre-hook of a prepared model: refuse a checkpoint whose ``smart_scores`` / ``smart_mask`` tensors have
    other shapes than this model's (prepared with another pattern, block or N:M), or (``strict``) none at all,
    *before* any tensor is copied, so a failed load leaves the model unchanged; torch would report a mismatch only
    after loading everything else, and without the fix."""
    wrong, smart_keys = [], []
    for name, layer in model.named_modules():
        if not is_smart_layer(layer):
            continue
        for attr in (SCORES_NAME, MASK_NAME):
            smart_keys.append(f"{prefix}{name}.{attr}")
            tensor = state_dict.get(smart_keys[-1])
            own = getattr(layer, attr, None)
            if tensor is not None and own is not None and tuple(tensor.shape) != tuple(own.shape):
                wrong.append(f"{name}.{attr}: checkpoint {tuple(tensor.shape)}, model {tuple(own.shape)}")
    if strict and smart_keys and not any(k in state_dict for k in smart_keys):
        raise ValueError(
            "this checkpoint has no SMART masks (smart_scores / smart_mask): it is a dense or squashed model. Load "
            "it into the model before prepare_model (or pass strict=False to keep this model's masks)."
        )
    if wrong:
        shown = first_items(wrong)
        raise ValueError(
            f"the checkpoint's SMART masks do not match this model ({shown}): it was prepared with another "
            "SmartConfig (pattern, block_shape or n:m). Prepare the model with the checkpoint's own config, "
            "SmartConfig.from_pretrained(checkpoint_dir), before loading it."
        )


def _undo_prepare(model: nn.Module, layers: list) -> None:
    """Revert `_attach` (and a half-installed state): original classes, no ``smart_`` tensors, no hooks."""
    state = model._modules.pop(STATE_MODULE_NAME, None)
    for handle in getattr(state, "hook_handles", []):
        handle.remove()
    for layer in layers:
        detach_smart_layer(layer)
