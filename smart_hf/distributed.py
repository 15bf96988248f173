"""FSDP2 (``fully_shard``) support: SMART math on whole tensors, writes into each rank's own shard.

Under FSDP2 every parameter is a ``DTensor`` sharded along dim 0 (``Shard(0)``: rank ``r`` holds
``torch.chunk(full, world)[r]``); buffers (the ``smart_mask``) stay whole on every rank. SMART needs whole tensors
in three places, and this module gives each one without touching FSDP internals:

- the soft top-k of a budget group ranks *all* its scores, so `full_tensor` gathers a sharded score parameter,
  differentiably: the backward pass reduce-scatters the gradient and averages it over ranks (``Partial("avg")``),
  exactly what FSDP does for the weights, so every rank's shard gets the data-parallel gradient;
- harden / score re-initialisation / jitter read whole weights or scores and write new scores:
  `whole_parameters` swaps the named parameters of some layers for whole plain copies, and on exit writes each
  rank's chunk of the chosen ones back into its shard;
- the per-step hard-mask zeroing (`zero_own_rows_`) fills a shard's pruned entries from the matching rows of the
  whole mask, with no communication at all.

On plain tensors (single process, DDP, FSDP1 inside ``summon_full_params``) every helper is the identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .core.fill import zero_where_

try:  # torch >= 2.4 has the public DTensor API; older builds simply never produce DTensors here
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
except ImportError:  # pragma: no cover
    DTensor = None

__all__ = [
    "full_tensor",
    "has_sharded_parameters",
    "is_sharded",
    "own_rows",
    "whole_parameters",
    "zero_own_rows_",
]


def is_sharded(tensor) -> bool:
    """Whether ``tensor`` is an FSDP2 parameter (a ``DTensor``).

    Args:
        tensor: any object.

    Returns:
        `bool`: True for a ``DTensor``.
    """
    return DTensor is not None and isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``tensor``; for a ``DTensor`` an all-gather whose gradient is averaged over ranks.

    ``grad_placements=Partial("avg")`` declares that each rank's gradient of the gathered tensor is a partial
    (per-rank-data) value: autograd then reduce-scatters it into the shards with a mean, the same reduction FSDP
    applies to the weight gradients.

    Args:
        tensor (`torch.Tensor`): a plain tensor or a ``DTensor``.

    Returns:
        `torch.Tensor`: ``tensor`` itself when plain, else the gathered whole tensor (differentiable).
    """
    if not is_sharded(tensor):
        return tensor
    mesh_dims = tensor.device_mesh.ndim
    gathered = tensor.redistribute(placements=[Replicate()] * mesh_dims)
    return gathered.to_local(grad_placements=[Partial("avg")] * mesh_dims)


def own_rows(whole: torch.Tensor, like) -> torch.Tensor:
    """This rank's part of ``whole`` for a parameter ``like`` sharded as ``Shard(0)`` (``torch.chunk`` layout).

    Args:
        whole (`torch.Tensor`): a tensor of the whole parameter's shape.
        like: the (possibly sharded) parameter whose layout to follow.

    Returns:
        `torch.Tensor`: ``whole`` for a plain ``like``, else this rank's rows (empty when it holds none).

    Raises:
        ValueError: for a ``DTensor`` placed other than ``[Shard(0)]``.
    """
    if not is_sharded(like):
        return whole
    placements = like.placements
    if len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(
            f"smart_hf supports FSDP2 parameters sharded as [Shard(0)], got {placements}; use the default "
            "fully_shard placement (one mesh dimension, dim 0)."
        )
    rank, world = like.device_mesh.get_local_rank(), like.device_mesh.size()
    chunks = torch.chunk(whole, world, dim=0)
    if rank >= len(chunks):  # fewer rows than ranks: this rank holds an empty shard
        return whole[:0]
    return chunks[rank]


@torch.no_grad()
def zero_own_rows_(param: torch.Tensor, whole_pruned: torch.Tensor) -> None:
    """Write zeros where the boolean ``whole_pruned`` (the whole weight's shape) is True, in place; ``param`` may be
    a shard: each rank fills its own rows. Filling (not multiplying) also clears a NaN/Inf that reached a pruned
    weight (NaN * 0 is NaN).

    Args:
        param (`torch.Tensor`): the weight, plain or an FSDP2 shard; changed in place.
        whole_pruned (`torch.Tensor`): boolean, the whole weight's shape; True where pruned.
    """
    local = param.to_local() if is_sharded(param) else param
    zero_where_(local, own_rows(whole_pruned, param))


@contextlib.contextmanager
def whole_parameters(
    modules: Iterable[nn.Module], names: tuple[str, ...], write_back: tuple[str, ...] = ()
) -> Iterator[None]:
    """Inside the block, ``module.<name>`` is a whole, plain ``nn.Parameter`` for every sharded parameter listed.

    On exit the parameters in ``write_back`` copy their own rows back into the shards (values changed in place
    inside the block persist, as with FSDP1's ``summon_full_params(writeback=True)``); all originals are restored.
    Collective: every rank must enter with the same modules. A no-op when nothing is sharded.

    Args:
        modules: the modules whose parameters to swap.
        names: parameter names to swap in each module (e.g. ``("weight", "smart_scores")``).
        write_back: the names whose changed values are written back into the shards on exit.

    Returns:
        A context manager; inside it the parameters are whole.
    """
    swapped = []
    for module in modules:
        for name in names:
            original = module._parameters.get(name)
            if is_sharded(original):
                # full_tensor() returns a freshly gathered tensor: no copy needed
                whole = nn.Parameter(original.full_tensor().detach(), requires_grad=original.requires_grad)
                module._parameters[name] = whole
                swapped.append((module, name, original, whole))
    try:
        yield
    finally:
        for module, name, original, whole in swapped:
            if name in write_back:
                with torch.no_grad():
                    original.to_local().copy_(own_rows(whole.detach(), original))
            module._parameters[name] = original


def has_sharded_parameters(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is an FSDP2 ``DTensor``.

    Args:
        model (`nn.Module`): any model.

    Returns:
        `bool`: True when at least one parameter is sharded.
    """
    return any(is_sharded(p) for p in model.parameters())
