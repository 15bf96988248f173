"""`to_sparse_kernels`: BSR linears on CPU equal the dense pruned model; 2:4 is CUDA-only with a clear error."""

import pytest
import torch
from tiny_models import text_inputs, tiny_bert, tiny_vit, vit_inputs

import smart_hf as sh
from smart_hf.artifact.kernels import BSRLinear, to_sparse_kernels


def _pruned(factory, **cfg):
    model = factory().eval()
    sh.prepare_model(model, sh.SmartConfig(**cfg))
    sh.harden(model)
    return model


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize(("factory", "make_inputs"), [(tiny_vit, vit_inputs), (tiny_bert, text_inputs)])
def test_bsr_equals_the_dense_pruned_model(factory, make_inputs):
    model = _pruned(factory, pattern="block", block_shape=[4, 4], sparsity=0.75)
    inputs = make_inputs(3)
    dense = _logits(model, inputs)
    targeted = list(sh.get_smart_state(model).targeted_module_names)
    result = to_sparse_kernels(model, format="bsr")
    linears = [n for n in targeted if type(model.get_submodule(n)) is BSRLinear]
    assert result["converted"] == linears and linears
    assert all(e["reason"] for e in result["skipped"])  # e.g. ViT's patch-embedding Conv2d stays dense
    torch.testing.assert_close(_logits(model, inputs), dense, atol=1e-4, rtol=0)
    layer = model.get_submodule(linears[0])
    assert layer.weight.layout == torch.sparse_bsr and layer.block_density < 0.6


def test_bsr_min_sparsity_and_channel_blocksize():
    model = _pruned(tiny_vit, pattern="block", block_shape=[4, 4], sparsity=0.5)
    result = to_sparse_kernels(model, format="bsr", min_sparsity=0.99)
    assert not result["converted"] and all("min_sparsity" in e["reason"] for e in result["skipped"][1:])
    channel = _pruned(tiny_vit, pattern="channel", sparsity=0.5)
    assert not to_sparse_kernels(channel)["converted"]  # no natural block: needs blocksize
    channel = _pruned(tiny_vit, pattern="channel", sparsity=0.5)
    inputs = vit_inputs()
    dense = _logits(channel, inputs)
    assert to_sparse_kernels(channel, blocksize=(2, 2))["converted"]
    with pytest.raises(ValueError, match="square"):
        to_sparse_kernels(_pruned(tiny_vit), blocksize=(1, 32))
    torch.testing.assert_close(_logits(channel, inputs), dense, atol=1e-4, rtol=0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="format"):
        to_sparse_kernels(_pruned(tiny_vit), format="csr")
    with pytest.raises(ValueError, match="SMART model"):
        to_sparse_kernels(tiny_vit())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_2of4_on_cpu_names_the_requirement():
    with pytest.raises(ValueError, match="CUDA GPU"):
        to_sparse_kernels(_pruned(tiny_vit, pattern="nm"), format="2:4")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_2of4_semi_structured_equals_dense_on_cuda():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    # semi-structured kernels need dimensions that are multiples of 64 (fp16)
    config = BertConfig(
        vocab_size=100, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256
    )
    model = BertForSequenceClassification(config).eval()
    sh.prepare_model(model, sh.SmartConfig(pattern="nm", n=2, m=4))
    sh.squash(model)
    model = model.cuda().half()
    inputs = {"input_ids": torch.randint(0, 100, (4, 64), device="cuda")}
    dense = _logits(model, inputs)
    result = to_sparse_kernels(model, format="2:4")
    assert result["converted"]
    torch.testing.assert_close(_logits(model, inputs).float(), dense.float(), atol=5e-2, rtol=0)
