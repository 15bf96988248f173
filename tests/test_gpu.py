"""On a CUDA GPU: SmartTrainer under bf16 / fp16 autocast for every pattern, the 2:4 semi-structured kernels at
BERT-base shapes, and torch.compile. Marked ``gpu`` (deselected by default; ``pytest -m gpu tests/test_gpu.py``) and
skipped without CUDA. ``scripts/gpu_check.sh`` runs these with the GPU benchmarks.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_vit
from transformers import AutoModelForImageClassification, BertConfig, BertModel

import smart_hf as sh

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PATTERNS = {
    "nm2:4": dict(pattern="nm"),
    "nm1:4": dict(pattern="nm", n=1, m=4),
    "block4x4": dict(pattern="block", block_shape=[4, 4], sparsity=0.5),
    "channel": dict(pattern="channel", sparsity=0.5),
    "coupled": dict(pattern="coupled", sparsity=0.5),
}


def _images(count: int = 32, seed: int = 0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(count, 3, 16, 16, generator=g), torch.randint(0, 2, (count,), generator=g)
    return Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.numpy()}).with_format("torch")


def _train(tmp_path, pattern: dict, precision: str | None = None, compile_: bool = False, steps: int = 8):
    torch.manual_seed(0)
    args = sh.SmartTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        pretrain_steps=0,
        search_steps=steps // 2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        save_plots=False,
        seed=0,
        collapse_action="off",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        torch_compile=compile_,
        dataloader_num_workers=0,
    )
    trainer = sh.SmartTrainer(
        model=tiny_vit(), args=args, smart_config=sh.SmartConfig(**pattern), train_dataset=_images()
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_autocast_every_pattern_exact_budget_no_nan_stock_reload(tmp_path, name, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    trainer = _train(tmp_path / "run", PATTERNS[name], precision)
    model = trainer.model
    assert next(model.parameters()).is_cuda
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert isinstance(sh.check_sparsity(model), dict)  # raises when a budget or the pattern is not exact
    out = tmp_path / "pruned"
    sh.save_pruned(model, out, save_plots=False)
    stock = AutoModelForImageClassification.from_pretrained(out).cuda().eval()
    model.eval()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.no_grad():
        assert torch.allclose(stock(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_2to4_kernels_equal_dense_at_bert_base_shapes(dtype):
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 semi-structured kernels need compute capability >= 8.0")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=2)
    model = sh.prepare_model(BertModel(config), sh.SmartConfig(pattern="nm"))
    sh.harden(model)
    sh.apply_hard_masks_(model)
    sh.squash(model)
    model = model.cuda().to(dtype).eval()
    ids = torch.randint(0, config.vocab_size, (8, 128), device="cuda")
    with torch.no_grad():
        dense = model(input_ids=ids).last_hidden_state
        report = sh.to_sparse_kernels(model, format="2:4")
        sparse = model(input_ids=ids).last_hidden_state
    assert report["converted"], report
    tol = 2e-2 if dtype == torch.float16 else 6e-2
    assert torch.allclose(sparse.float(), dense.float(), atol=tol, rtol=tol), (sparse - dense).abs().max()


def test_torch_compile_on_cuda_equals_eager(tmp_path):
    eager = _train(tmp_path / "eager", PATTERNS["nm2:4"])
    compiled = _train(tmp_path / "compiled", PATTERNS["nm2:4"], compile_=True)
    for a, b in zip(sh.get_smart_state(eager.model).layers, sh.get_smart_state(compiled.model).layers):
        assert torch.equal(a.smart_mask, b.smart_mask)
    loss = [[log["loss"] for log in t.state.log_history if "loss" in log] for t in (eager, compiled)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-3, abs=1e-4)
