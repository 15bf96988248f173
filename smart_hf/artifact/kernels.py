"""`to_sparse_kernels`: run a pruned model on sparse kernels (inference only).

* ``format="bsr"``: every pruned ``nn.Linear`` becomes a `BSRLinear`, which holds its weight as a PyTorch BSR tensor
  (block-compressed rows, ``W.to_sparse_bsr(blocksize)``) and computes ``(W_bsr @ x.T).T + b`` -- on CPU that is ~9x
  faster than ``F.linear`` with a BSR weight. Works on CPU and CUDA. Speed: on a 2-core CPU BSR beats dense only from
  ~85-90% block sparsity (docs/benchmarks.md); below that it is slower, so ``min_sparsity`` can skip sparser-looking
  but not sparse-enough layers.
* ``format="2:4"``: every 2:4-pruned ``nn.Linear`` gets a semi-structured sparse weight
  (``torch.sparse.to_sparse_semi_structured``: CUTLASS / cuSPARSELt). CUDA only (Ampere or newer, fp16/bf16).

The model is changed in place (a prepared model is squashed first) and returned; outputs equal the dense pruned
model's. Keep saving the dense artifact (`save_pruned`): sparse-kernel models are for running, not for checkpoints.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from torch import nn

from ..lifecycle import is_prepared, squash
from ..metadata import read as read_metadata

logger = logging.getLogger(__name__)

__all__ = ["BSRLinear", "FORMATS", "to_sparse_kernels"]

FORMATS = ("bsr", "2:4")


class BSRLinear(nn.Module):
    """``y = (W_bsr @ x.T).T + b`` with ``W`` stored block-sparse (BSR); a drop-in for an inference ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, blocksize: tuple[int, int]):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.blocksize = tuple(blocksize)
        with warnings.catch_warnings():  # "Sparse BSR tensor support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            weight = linear.weight.detach().to_sparse_bsr(self.blocksize)
        self.register_buffer("weight", weight, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        self.register_buffer("bias", bias, persistent=False)

    @property
    def nnz_blocks(self) -> int:
        return int(self.weight.values().shape[0])

    @property
    def block_density(self) -> float:
        r, c = self.blocksize
        return self.nnz_blocks / ((self.out_features // r) * (self.in_features // c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.weight.dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            y = (self.weight @ x2.t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, blocksize={self.blocksize}, "
            f"block_density={self.block_density:.3f}"
        )


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


@torch.no_grad()
def to_sparse_kernels(
    model: nn.Module, format: str = "bsr", blocksize: tuple[int, int] | None = None, min_sparsity: float = 0.0
) -> dict:
    """Swap the pruned linears of a hardened/squashed SMART model for sparse kernels, in place.

    Args:
        model: the SMART model (a prepared one is squashed first).
        format: ``"bsr"`` (CPU/CUDA) or ``"2:4"`` (CUDA only).
        blocksize: BSR block ``(rows, cols)``; default: the layer's pruning block (``block`` pattern; a non-square
            ``r x c`` uses ``gcd(r, c)`` squares, as CPU BSR needs square blocks). Required for channel / N:M
            layers.
        min_sparsity: BSR only: convert a layer only if at least this share of its blocks is zero.

    Returns:
        ``{"converted": [names], "skipped": [{"name", "reason"}]}``.

    Raises:
        ValueError: an unknown ``format``, ``"2:4"`` without a CUDA GPU (or a model not on it in fp16 / bf16),
            ``min_sparsity`` outside [0, 1), a non-square BSR ``blocksize`` on CPU, or a model that is not a
            hardened / squashed SMART model.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if format == "2:4" and not torch.cuda.is_available():
        raise ValueError(
            "format='2:4' needs a CUDA GPU (compute capability >= 8.0, e.g. A100/H100) and the model on it in "
            "fp16/bf16 (model.cuda().half()); torch's semi-structured kernels do not exist on CPU. On CPU use "
            "format='bsr' or run the dense masked model."
        )
    if not 0.0 <= min_sparsity < 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1), got {min_sparsity}.")
    if is_prepared(model):
        squash(model)
    meta = read_metadata(model)
    if not meta:
        raise ValueError("to_sparse_kernels needs a SMART model: prepared + hardened, or squashed (config.smart_hf).")
    converted, skipped = [], []
    for name, info in meta["layers"].items():
        module = model.get_submodule(name)
        if type(module) is not nn.Linear:
            skipped.append({"name": name, "reason": f"{type(module).__name__} is not an nn.Linear"})
            continue
        if format == "2:4":
            reason = _to_semi_structured(module, info)
        else:
            reason = _to_bsr(model, name, module, info, blocksize, min_sparsity)
        if reason:
            skipped.append({"name": name, "reason": reason})
        else:
            converted.append(name)
    for entry in skipped:
        logger.info("smart_hf.to_sparse_kernels: kept %s dense (%s)", entry["name"], entry["reason"])
    return {"converted": converted, "skipped": skipped}


def _to_bsr(model, name, module, info, blocksize, min_sparsity) -> str | None:
    if blocksize is None:
        if info["pattern"] != "block":
            return f"{info['pattern']} pattern has no natural block; pass blocksize=(r, c)"
        r, c = info["block_shape"]
        g = math.gcd(r, c)  # CPU (MKL) BSR needs square blocks; g x g squares tile every r x c block exactly
        blocksize = (g, g)
    r, c = blocksize
    if r != c and module.weight.device.type == "cpu":
        raise ValueError(f"BSR on CPU needs square blocks (MKL); got blocksize={tuple(blocksize)}, e.g. use (4, 4).")
    out, inp = module.weight.shape
    if out % r or inp % c:
        return f"weight {out}x{inp} is not divisible by blocksize {blocksize}"
    zero_blocks = (module.weight.reshape(out // r, r, inp // c, c) == 0).all(dim=(1, 3)).float().mean().item()
    if zero_blocks < min_sparsity:
        return f"block sparsity {zero_blocks:.3f} < min_sparsity {min_sparsity}"
    _set_module(model, name, BSRLinear(module, (r, c)))
    return None


def _to_semi_structured(module: nn.Linear, info) -> str | None:
    if info["pattern"] != "nm" or (info["n"], info["m"]) != (2, 4):
        return f"{info['pattern']} pattern is not 2:4"
    weight = module.weight
    if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            "format='2:4' needs the model on a CUDA GPU in fp16/bf16; call model.cuda().half() (or .to(torch.bfloat16)) "
            "first."
        )
    from torch.sparse import to_sparse_semi_structured

    module.weight = nn.Parameter(to_sparse_semi_structured(weight.detach()), requires_grad=False)
    return None
