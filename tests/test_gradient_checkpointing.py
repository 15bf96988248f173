"""Activation (gradient) checkpointing with SMART: the soft masks are solved once per root forward, outside every
checkpointed block, so a block re-run in the backward pass reads the tensors its forward read.

Compared with the same run without checkpointing: the first loss equals exactly (the forward computes the same
values), later losses to float32 round-off (each step applies gradients that differ in the last bits), and every
gradient within 1e-5 of its norm (float32 summation order changes under recomputation; a reentrant checkpoint
back-propagates each re-run block through a fresh solve of the same scores, whose float64 shift can differ in the
last bits), while the solver's warm start stays as the forward left it. Covered: non-reentrant (transformers' and TRL's
default), reentrant, and selective activation checkpointing; encoder (BERT, whose pooler runs outside the
checkpointed blocks), GPT-2 and Llama-style models; the dense, search and fine-tune stages in the Trainer.
"""

import copy

import pytest
import tiny_models
import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from transformers import Trainer, TrainingArguments

import smart_hf as sh
from smart_hf import SmartCallback, SmartTrainer, SmartTrainingArguments

# transformers 5.x deprecates the name in favour of activation_checkpointing_enable; it is the one users know
pytestmark = pytest.mark.filterwarnings("ignore:`(gradient|is_gradient)_checkpointing.*deprecated:FutureWarning")

MODELS = {"bert": tiny_models.tiny_bert, "gpt2": tiny_models.tiny_gpt2, "llama": tiny_models.tiny_llama}
CONFIG = dict(pattern="block", block_shape=[8, 8], sparsity=0.5)


def _save_matmuls(ctx, op, *args, **kwargs):
    """Selective checkpointing policy: keep matmul outputs, recompute the rest."""
    return CheckpointPolicy.MUST_SAVE if op == torch.ops.aten.mm.default else CheckpointPolicy.PREFER_RECOMPUTE


CHECKPOINTING = {
    "non-reentrant": {"use_reentrant": False},
    "reentrant": {"use_reentrant": True},
    "selective": {"use_reentrant": False, "context_fn": lambda: create_selective_checkpoint_contexts(_save_matmuls)},
}


def _loss_and_grads(name: str, checkpointing: dict | None, steps: int = 2):
    """Loss and every gradient of a prepared tiny model over ``steps`` optimizer steps of the structure search, and
    whether every backward left the solver's warm starts (``shift_warm_start``) as the forward set them."""
    torch.manual_seed(0)
    model = sh.prepare_model(MODELS[name](), sh.SmartConfig(**CONFIG))
    if checkpointing is not None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = tiny_models.text_inputs(4)
    labels = torch.tensor([0, 1, 2, 0]) if name == "bert" else batch["input_ids"]
    losses, grads, kept = [], {}, []
    for step in range(steps):
        sh.update_temperature(model, step, steps)
        optimizer.zero_grad()
        loss = model(**batch, labels=labels).loss
        shifts = [g.shift_warm_start.clone() for g in sh.get_smart_state(model).groups]
        loss.backward()
        kept.append(all(torch.equal(a, g.shift_warm_start) for a, g in zip(shifts, sh.get_smart_state(model).groups)))
        losses.append(loss.item())
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return model, losses, grads, all(kept)


@pytest.mark.parametrize("mode", list(CHECKPOINTING))
@pytest.mark.parametrize("name", list(MODELS))
def test_checkpointed_search_matches_plain(name, mode):
    plain, plain_losses, plain_grads, _ = _loss_and_grads(name, None)
    model, losses, grads, warm_start_kept = _loss_and_grads(name, CHECKPOINTING[mode])
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    assert losses[0] == plain_losses[0]  # the same forward on the same weights
    # the step applied gradients that differ by float32 round-off, so later losses agree to round-off, not bitwise
    assert losses[1:] == pytest.approx(plain_losses[1:], rel=1e-6)
    assert grads.keys() == plain_grads.keys() and any("smart_scores" in n for n in grads)
    for n, g in grads.items():  # float32 round-off only: summation order differs under recomputation
        assert (g - plain_grads[n]).norm() <= 1e-5 * plain_grads[n].norm() + 1e-12, n
    # the scores took the same round-off as the weights: the mask state agrees to round-off
    fractionality = sh.get_smart_state(model).fractionality()
    assert fractionality == pytest.approx(sh.get_smart_state(plain).fractionality(), rel=1e-5)
    assert warm_start_kept  # the recomputations in backward did not move the solver's warm start


@pytest.mark.parametrize("mode", list(CHECKPOINTING))
def test_two_forwards_one_backward(mode):
    """Two forwards (a contrastive or preference loss) and one backward: the recomputations of the first forward's
    blocks read the second forward's masks, which are the same (same scores, same temperature)."""
    grads = {}
    for name, checkpointing in (("plain", None), ("ckpt", CHECKPOINTING[mode])):
        torch.manual_seed(0)
        model = sh.prepare_model(tiny_models.tiny_llama(), sh.SmartConfig(**CONFIG))
        if checkpointing is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.train()
        a, b = tiny_models.text_inputs(2), tiny_models.text_inputs(2)
        (model(**a, labels=a["input_ids"]).loss + model(**b, labels=b["input_ids"]).loss).backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for n, g in grads["plain"].items():
        assert (grads["ckpt"][n] - g).norm() <= 1e-5 * g.norm() + 1e-12, n


def test_layer_called_alone_sees_new_scores():
    """Masks stay cached after the forward for the backward's recomputations, yet a layer called on its own after
    an optimizer step uses the new scores, never the cached masks."""
    model = sh.prepare_model(tiny_models.tiny_gpt2(), sh.SmartConfig(**CONFIG))
    state = sh.get_smart_state(model)
    layer = state.layers[0]
    model(**tiny_models.text_inputs())
    cached = state.unit_mask(layer)
    with torch.no_grad():
        layer.smart_scores.mul_(-1)
    fresh = state.unit_mask(layer)
    assert not torch.allclose(fresh, cached)


def test_deepcopy_after_a_soft_forward():
    """The cached masks carry their forward's graph; a copy (distillation teacher, EMA) starts without them."""
    model = sh.prepare_model(tiny_models.tiny_gpt2(), sh.SmartConfig(**CONFIG)).eval()
    inputs = tiny_models.text_inputs()
    model(**inputs).logits.sum().backward()
    copied = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(copied(**inputs).logits, model(**inputs).logits)


def _trainer_run(tmp_path, gc: dict | None, smart_trainer: bool):
    torch.manual_seed(0)
    common = dict(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        learning_rate=1e-3,
        seed=0,
        gradient_checkpointing=gc is not None,
        gradient_checkpointing_kwargs=gc,
    )
    data = tiny_models.lm_dataset(16)
    if smart_trainer:
        args = SmartTrainingArguments(pretrain_steps=3, search_steps=5, save_plots=False, **common)
        trainer = SmartTrainer(
            model=tiny_models.tiny_llama(), args=args, smart_config=sh.SmartConfig(**CONFIG), train_dataset=data
        )
    else:
        model = sh.prepare_model(tiny_models.tiny_llama(), sh.SmartConfig(**CONFIG))
        sh.set_mode(model, "dense")
        callback = SmartCallback(pretrain_steps=3, search_steps=5, squash_at_end=False, save_pruned_to=None)
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[callback])
    trainer.train()
    state = sh.get_smart_state(trainer.model)
    assert state.is_hard
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return [layer.smart_mask.clone() for layer in state.layers], losses


@pytest.mark.parametrize("smart_trainer", [True, False], ids=["SmartTrainer", "SmartCallback-in-Trainer"])
@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
def test_every_stage_under_checkpointing(tmp_path, smart_trainer, mode):
    """Dense pre-train, search and fine-tune with the Trainer's gradient_checkpointing=True: the same masks and
    losses as without."""
    masks, losses = _trainer_run(tmp_path / "plain", None, smart_trainer)
    gc_masks, gc_losses = _trainer_run(tmp_path / "gc", CHECKPOINTING[mode], smart_trainer)
    assert all(torch.equal(a, b) for a, b in zip(masks, gc_masks))
    assert len(losses) == 12 and losses == pytest.approx(gc_losses, rel=1e-6)
