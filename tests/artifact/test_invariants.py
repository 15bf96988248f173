"""The sparsity invariants: sparsity can neither vanish nor be silently absent, at any point of a run.

For block 4x4 (global budget; tiny ViT and tiny ResNet), output channels (tiny ViT) and 2:4 (tiny BERT), one short
SmartTrainer run per pattern (module fixture) checks after EVERY optimizer step -- both before and after SmartCallback
re-applies the masks -- that `check_sparsity` passes, the frozen masks never move and pruned weights are exactly zero.
The same runs feed the save -> stock load, resume, squash / slim / BSR tests. The rest shows that every way sparsity
used to get lost is either impossible or flagged by `check_sparsity` with the layer and expected vs found.
"""

import copy
import logging
import math
import os

import pytest
import safetensors.torch
import tiny_models
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

import smart_hf as sh
from smart_hf.artifact.invariants import check_sparsity
from smart_hf.training.callbacks import SmartCallback
from smart_hf.training.trainer import SmartTrainer
from smart_hf.training.training_args import SmartTrainingArguments

MAX_STEPS, SEARCH_STEPS, SAVE_EVERY = 16, 8, 4  # checkpoints at 4 (mid-search), 8, 12 (mid-fine-tune), 16
RESUME_POINTS = {"mid-search": 4, "mid-finetune": 12}

# name -> (model key in tiny_models.MODELS, SmartConfig kwargs)
CASES = {
    "block4x4-vit": ("vit", dict(pattern="block", block_shape=[4, 4], sparsity=0.5, budget="global")),
    "block4x4-resnet": ("resnet", dict(pattern="block", block_shape=[4, 4], sparsity=0.75, budget="global")),
    "channel-vit": ("vit", dict(pattern="channel", sparsity=0.5)),
    "2of4-bert": ("bert", dict(pattern="nm", n=2, m=4)),
}


def build_model(case: str, seed: int = 0):
    torch.manual_seed(seed)  # runs that are compared start from the same weights (or, resumed, from other ones)
    return tiny_models.MODELS[CASES[case][0]][0]()


def smart_config(case: str) -> sh.SmartConfig:
    return sh.SmartConfig(**CASES[case][1])


def dataset(case: str, n: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(1)
    key = CASES[case][0]
    if key == "bert":
        columns = {"input_ids": torch.randint(0, 100, (n, 8), generator=g).numpy()}
    else:
        side = 32 if key == "resnet" else 16
        columns = {"pixel_values": torch.randn(n, 3, side, side, generator=g).numpy()}
    columns["labels"] = torch.randint(0, 3, (n,), generator=g).numpy()
    return Dataset.from_dict(columns).with_format("torch")


def inputs(case: str) -> dict:
    torch.manual_seed(7)
    return tiny_models.MODELS[CASES[case][0]][1](batch=3)


def run_args(output_dir, **overrides) -> SmartTrainingArguments:
    base = dict(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=8,
        pretrain_steps=0,
        search_steps=SEARCH_STEPS,
        learning_rate=1e-2,  # large, with weight decay: the fine-tune really pulls on every weight
        weight_decay=0.1,
        score_learning_rate=5e-2,
        logging_steps=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        data_seed=0,
        log_hardening_jump=False,
        save_plots=False,
        disable_tqdm=True,
    )
    base.update(overrides)
    return SmartTrainingArguments(**base)


def targeted_weights(model) -> int:
    return sum(layer.weight.numel() for layer in sh.get_smart_state(model).layers)


def pruned_but_nonzero(layer) -> int:
    """Weights of pruned units that are not exactly zero (computed from the frozen mask, not from the report)."""
    pruned = layer.smart_layout.expand(1 - layer.smart_mask).expand_as(layer.weight) > 0
    return int((layer.weight.detach()[pruned] != 0).sum())


class StepInvariants(TrainerCallback):
    """Records, after every optimizer step, what `check_sparsity` says about the live model and -- once hardened --
    whether the frozen masks still equal the ones at hardening and how many pruned weights are non-zero."""

    def __init__(self):
        self.rows, self.masks_at_hardening = [], None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        smart = sh.get_smart_state(model)
        row = {"step": state.global_step, "mode": smart.mode_name, "error": None, "zeros": None}
        try:
            row["zeros"] = check_sparsity(smart)["total"]["zeros"]
        except ValueError as err:
            row["error"] = str(err)
        if smart.is_hard:
            masks = [layer.smart_mask.clone() for layer in smart.layers]
            if self.masks_at_hardening is None:
                self.masks_at_hardening = masks
            row["masks_frozen"] = all(torch.equal(a, b) for a, b in zip(self.masks_at_hardening, masks))
            row["pruned_nonzero"] = sum(pruned_but_nonzero(layer) for layer in smart.layers)
        self.rows.append(row)


def train_case(case: str, output_dir, model=None, resume_from=None, **overrides):
    """A SmartTrainer run with two recorders: one ahead of SmartCallback (sees the optimizer's raw result), one after
    it (sees the re-masked weights)."""
    trainer = SmartTrainer(
        model=model if model is not None else build_model(case),
        args=run_args(output_dir, **overrides),
        smart_config=smart_config(case),
        train_dataset=dataset(case),
    )
    before, after = StepInvariants(), StepInvariants()
    trainer.callback_handler.callbacks.insert(0, before)  # SmartCallback is first; this goes ahead of it
    trainer.add_callback(after)
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer, before, after


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted run per case, checkpointing every SAVE_EVERY steps (the resume tests start from those)."""
    out = {}
    for case in CASES:
        directory = tmp_path_factory.mktemp(case)
        trainer, before, after = train_case(case, directory, save_strategy="steps", save_steps=SAVE_EVERY)
        out[case] = {"dir": directory, "trainer": trainer, "before": before, "after": after}
    return out


def masks_of(model) -> list[torch.Tensor]:
    return [layer.smart_mask.clone() for layer in sh.get_smart_state(model).layers]


def expected_zero_bound(model, sparsity: float) -> tuple[float, float]:
    """Targeted zeros that a budget of ``sparsity`` allows: ``s * W`` give or take half the largest unit."""
    smart = sh.get_smart_state(model)
    half_unit = max(layer.smart_layout.unit_cost for layer in smart.layers) / 2
    target = sparsity * targeted_weights(model)
    return target - half_unit, target + half_unit


# ------------------------------------------------------------------------------ every step of a SmartTrainer run
@pytest.mark.parametrize("case", CASES)
def test_every_optimizer_step_keeps_exact_sparsity_and_frozen_masks(runs, case):
    trainer, before, after = runs[case]["trainer"], runs[case]["before"], runs[case]["after"]
    assert [r["step"] for r in after.rows] == list(range(1, MAX_STEPS + 1))
    assert [r["mode"] for r in after.rows] == ["soft"] * SEARCH_STEPS + ["hard"] * (MAX_STEPS - SEARCH_STEPS)
    for recorder in (before, after):
        assert [r["error"] for r in recorder.rows] == [None] * MAX_STEPS
        hard_rows = [r for r in recorder.rows if r["mode"] == "hard"]
        assert all(r["masks_frozen"] for r in hard_rows)
        # `before` runs ahead of the re-masking: AdamW with weight decay alone must leave pruned weights at 0
        assert [r["pruned_nonzero"] for r in hard_rows] == [0] * len(hard_rows)
    low, high = expected_zero_bound(trainer.model, smart_config(case).sparsity)
    assert all(low <= r["zeros"] <= high for r in after.rows)
    if case in ("block4x4-vit", "2of4-bert"):  # every layer tiles into even counts of 16-weight blocks / 4-groups
        assert {r["zeros"] for r in after.rows} == {targeted_weights(trainer.model) // 2}
    assert all(torch.equal(a, b) for a, b in zip(masks_of(trainer.model), after.masks_at_hardening))
    assert trainer.smart_callback.verification["verified"]  # the end-of-training check ran and passed


# --------------------------------------------------------------------------------- save -> stock from_pretrained
@pytest.mark.parametrize("case", CASES)
def test_saved_artifact_holds_the_zeros_and_loads_exactly(runs, case, tmp_path):
    trainer = runs[case]["trainer"]
    trainer.save_model(str(tmp_path))
    auto_class = tiny_models.MODELS[CASES[case][0]][2]
    loaded = auto_class.from_pretrained(str(tmp_path)).eval()
    live = check_sparsity(trainer.model)
    for result in (check_sparsity(loaded), check_sparsity(str(tmp_path))):
        assert result["mode"] == "squashed"
        assert result["total"] == live["total"]
        assert [b["found"] for b in result["budget"]] == [b["found"] for b in live["budget"]]
    stored = list(safetensors.torch.load_file(os.path.join(tmp_path, "model.safetensors")).values())
    modules = dict(loaded.named_modules())
    for name, layer in zip(
        sh.get_smart_state(trainer.model).targeted_module_names, sh.get_smart_state(trainer.model).layers
    ):
        masked = layer.smart_layout.apply(layer.weight.detach(), layer.smart_mask)
        assert torch.equal(modules[name].weight, masked), name
        # the file itself (whatever key the writer used) holds this exact zero-filled tensor
        assert any(t.shape == masked.shape and torch.equal(t, masked) for t in stored), name
    model = trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs(case)).logits, model(**inputs(case)).logits, atol=1e-4, rtol=0)


# -------------------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize("point", RESUME_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_resume_ends_with_the_masks_of_the_uninterrupted_run(runs, case, point, tmp_path):
    checkpoint = runs[case]["dir"] / f"checkpoint-{RESUME_POINTS[point]}"
    trainer, before, after = train_case(case, tmp_path, model=build_model(case, seed=123), resume_from=str(checkpoint))
    assert [r["step"] for r in after.rows] == list(range(RESUME_POINTS[point] + 1, MAX_STEPS + 1))
    assert [r["error"] for r in before.rows + after.rows] == [None] * 2 * len(after.rows)
    assert all(r["masks_frozen"] and r["pruned_nonzero"] == 0 for r in after.rows if r["mode"] == "hard")
    uninterrupted = runs[case]["trainer"].model
    assert all(torch.equal(a, b) for a, b in zip(masks_of(trainer.model), masks_of(uninterrupted)))
    assert check_sparsity(trainer.model)["total"] == check_sparsity(uninterrupted)["total"]


# ---------------------------------------------------------------------------------- squash, slim, sparse kernels
def masked_logits(model, case):
    with torch.no_grad():
        return model.eval()(**inputs(case)).logits


@pytest.mark.parametrize("case", CASES)
def test_squash_keeps_exact_sparsity_and_outputs(runs, case):
    prepared = runs[case]["trainer"].model
    squashed = sh.squash(copy.deepcopy(prepared))
    assert not hasattr(squashed, "smart_state")
    assert check_sparsity(squashed)["total"] == check_sparsity(prepared)["total"]
    torch.testing.assert_close(masked_logits(squashed, case), masked_logits(prepared, case), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["uniform", "per_layer"])
def test_slim_channel_ffns_keeps_exact_sparsity_and_outputs(runs, mode, tmp_path):
    case = "channel-vit"
    prepared = runs[case]["trainer"].model
    slim = copy.deepcopy(prepared)
    summary = sh.slim(slim, mode=mode)
    assert summary["params_removed"] > 0 and all(p["after"] < p["before"] for p in summary["pairs"])
    result = check_sparsity(slim)  # removed channels count as pruned units of their original layers
    reference = check_sparsity(prepared)
    assert [b["found"] for b in result["budget"]] == [b["found"] for b in reference["budget"]]
    assert result["total"]["weights"] == reference["total"]["weights"]
    assert result["total"]["zeros"] >= reference["total"]["zeros"]  # removed fc2 columns count as zeros too
    torch.testing.assert_close(masked_logits(slim, case), masked_logits(prepared, case), atol=1e-4, rtol=0)
    sh.save_pruned(slim, str(tmp_path), save_plots=False)
    assert check_sparsity(str(tmp_path))["total"] == result["total"]
    torch.testing.assert_close(
        masked_logits(sh.load_slim(str(tmp_path)), case), masked_logits(prepared, case), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize(
    ("key", "mode"),
    [("vit", "uniform"), ("bert", "per_layer"), ("resnet", "per_layer")],
    ids=["vit", "bert", "resnet"],
)
def test_slim_heads_and_conv_chains_keep_the_budget(key, mode, tmp_path):
    """Whole heads (value-row head blocks, `head_pruning_overrides`) + channel FFNs on ViT / BERT, channel-pruned
    ResNet conv chains: after slimming, every budget still finds exactly what the prepared model kept (q/k of a
    removed head: a range around it, as their rows go with the head whether kept or not)."""
    from smart_hf.slim.heads import head_pruning_overrides

    factory, make_inputs, _ = tiny_models.MODELS[key]
    torch.manual_seed(0)
    model = factory().eval()
    if key == "resnet":
        config = sh.SmartConfig(pattern="channel", sparsity=0.5)
    else:
        config = sh.SmartConfig(pattern="channel", budget="layer", overrides=head_pruning_overrides(model, 0.5))
    sh.harden(sh.prepare_model(model, config))
    reference = check_sparsity(model)
    slim = copy.deepcopy(model)
    summary = sh.slim(slim, mode=mode)
    assert summary["params_removed"] > 0 and (summary["heads"] or summary["convs"])
    result = check_sparsity(slim)
    heads = {b[key] for b in summary["heads"] for key in ("q", "k")}  # may lose kept rows with their head
    assert len(result["budget"]) == len(reference["budget"])
    for entry, ref in zip(result["budget"], reference["budget"]):
        assert entry["layers"] == ref["layers"] and entry["ok"]
        if heads.isdisjoint(entry["layers"]):
            assert entry["found"] == ref["found"]
        else:  # a range that holds what the prepared model kept
            low, high = map(int, entry["found"].split(" (")[0].split(" to "))
            assert low <= ref["found"] <= high and low < high
    assert result["total"]["weights"] == reference["total"]["weights"]
    torch.manual_seed(1)
    batch = make_inputs(batch=2)
    with torch.no_grad():
        torch.testing.assert_close(slim(**batch).logits, model(**batch).logits, atol=1e-4, rtol=0)
    sh.save_pruned(slim, str(tmp_path), save_plots=False)
    reloaded = check_sparsity(str(tmp_path))  # config.json stores the layers sorted by name

    def by_layers(budget):
        return sorted((sorted(b["layers"]), str(b["found"])) for b in budget)

    assert by_layers(reloaded["budget"]) == by_layers(result["budget"])


def test_bsr_kernels_keep_exact_sparsity_and_outputs(runs):
    case = "block4x4-vit"
    prepared = runs[case]["trainer"].model
    sparse = copy.deepcopy(prepared)
    converted = sh.to_sparse_kernels(sparse, format="bsr")["converted"]
    assert sorted(converted) == sorted(sh.get_smart_state(prepared).targeted_module_names)
    assert all(sparse.get_submodule(name).weight.layout == torch.sparse_bsr for name in converted)
    assert check_sparsity(sparse)["total"] == check_sparsity(prepared)["total"]
    torch.testing.assert_close(masked_logits(sparse, case), masked_logits(prepared, case), atol=1e-4, rtol=0)


# ------------------------------------------------------------------- pruning that silently does nothing: impossible
def test_a_plain_trainer_that_never_hardens_still_saves_exact_sparsity(tmp_path):
    """The user forgot SmartCallback: the masks stay soft all run, yet the saved artifact is exactly 50% sparse."""
    case = "block4x4-vit"
    model = sh.prepare_model(build_model(case), smart_config(case))
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, report_to=[], use_cpu=True,
        save_strategy="no", learning_rate=1e-2,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=dataset(case)).train()
    assert sh.get_smart_state(model).mode_name == "soft"
    assert (sh.get_smart_state(model).layers[0].weight != 0).all()  # nothing was zeroed in memory
    sh.save_pruned(model, str(tmp_path / "pruned"), save_plots=False)
    result = check_sparsity(str(tmp_path / "pruned"))
    assert result["total"]["zeros"] * 2 == targeted_weights(model)


def test_a_search_too_short_to_binarise_still_hardens_exactly(tmp_path):
    """One search step at tau=1 leaves the soft mask near k/N everywhere; hardening must still hit the budget."""
    case = "channel-vit"
    trainer, _, after = train_case(case, tmp_path, max_steps=3, search_steps=1, score_learning_rate=1e-6)
    assert after.rows[0]["mode"] == "soft" and after.rows[0]["error"] is None
    assert sh.get_smart_state(trainer.model).fractionality() == 0.0  # hardened
    result = check_sparsity(trainer.model)
    low, high = expected_zero_bound(trainer.model, 0.5)
    assert low <= result["total"]["zeros"] <= high


@pytest.mark.parametrize(
    ("optim", "optim_args"), [("sgd", "momentum=0.9,nesterov=true,weight_decay=0.1"), ("rmsprop", "momentum=0.9")]
)
def test_momentum_optimizers_cannot_revive_pruned_weights(optim, optim_args, tmp_path):
    """Search-stage momentum on every weight, then hardening: the raw optimizer step (seen before SmartCallback
    re-masks) already leaves pruned weights at exactly zero, because hardening zeroed their optimizer state."""
    case = "block4x4-vit"
    trainer, before, _ = train_case(case, tmp_path, optim=optim, optim_args=optim_args, weight_decay=0.0)
    hard = [r for r in before.rows if r["mode"] == "hard"]
    assert len(hard) == MAX_STEPS - SEARCH_STEPS and all(r["pruned_nonzero"] == 0 for r in hard)
    moments = trainer.optimizer.state[sh.get_smart_state(trainer.model).layers[0].weight]
    assert "momentum_buffer" in moments  # the state that would have pushed the pruned weights was really there


def test_momentum_without_the_callback_is_flagged_and_remasking_fixes_it():
    """A plain loop whose optimizer carries search-stage momentum into the fine-tune pushes pruned weights off zero:
    `check_sparsity` names the layers, `apply_hard_masks_` (the documented per-step call) restores exact zeros."""
    case = "block4x4-vit"
    model = sh.prepare_model(build_model(case), smart_config(case))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    batch = {**inputs(case), "labels": torch.tensor([0, 1, 2])}
    for _ in range(3):  # search: momentum builds up on every weight
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sh.harden(model)
    check_sparsity(model)
    model(**batch).loss.backward()
    optimizer.step()  # momentum (and coupled weight decay) move pruned weights although their gradient is 0
    with pytest.raises(ValueError, match=r"vit\.layers\.0\..*pruned units hold non-zero"):
        check_sparsity(model)
    sh.apply_hard_masks_(model)
    assert check_sparsity(model)["total"]["zeros"] * 2 == targeted_weights(model)


class CorruptPrunedWeights(TrainerCallback):
    """At ``step``'s begin (after SmartCallback's), writes 1.0 into every pruned weight of the first layer."""

    def __init__(self, step):
        self.step, self.flagged = step, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.step:
            return
        layer = sh.get_smart_state(model).layers[0]
        with torch.no_grad():
            layer.weight[layer.smart_layout.expand(1 - layer.smart_mask).expand_as(layer.weight) > 0] = 1.0
        with pytest.raises(ValueError) as err:
            check_sparsity(model)
        self.flagged = str(err.value)


def test_weights_changed_by_hand_are_flagged_then_remasked_by_the_next_step(tmp_path):
    case = "2of4-bert"
    trainer = SmartTrainer(
        model=build_model(case), args=run_args(tmp_path), smart_config=smart_config(case), train_dataset=dataset(case)
    )
    corrupt, after = CorruptPrunedWeights(step=SEARCH_STEPS + 2), StepInvariants()
    trainer.add_callback(corrupt)
    trainer.add_callback(after)
    trainer.train()
    first = sh.get_smart_state(trainer.model).targeted_module_names[0]
    assert first in corrupt.flagged and "pruned weights are non-zero" in corrupt.flagged
    assert "groups of 4 hold more than 2 non-zero weights" in corrupt.flagged
    assert [r["error"] for r in after.rows] == [None] * MAX_STEPS  # re-masked at the end of that very step
    assert all(r["pruned_nonzero"] == 0 for r in after.rows if r["mode"] == "hard")


def test_end_of_training_check_raises_or_warns_on_a_broken_model(tmp_path, caplog):
    """A callback that corrupts the model after the last re-masking: train() fails loudly by default."""

    class CorruptAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == state.max_steps:
                with torch.no_grad():
                    sh.get_smart_state(model).layers[-1].weight.fill_(0.5)

    case = "block4x4-vit"
    for verify in ("raise", "warn"):
        trainer = SmartTrainer(
            model=build_model(case), args=run_args(tmp_path / verify), smart_config=smart_config(case),
            train_dataset=dataset(case), callbacks=[CorruptAtTheEnd()],
        )  # fmt: skip
        trainer.smart_callback.verify_sparsity = verify
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="smart_hf.training.callbacks"):
            if verify == "raise":
                with pytest.raises(ValueError, match="sparsity check failed"):
                    trainer.train()
            else:
                trainer.train()
        last = sh.get_smart_state(trainer.model).targeted_module_names[-1]
        assert "SPARSITY CHECK FAILED" in caplog.text and last in caplog.text
        assert trainer.smart_callback.verification["verified"] is False


def test_end_of_training_logs_sparsity_verified(runs, caplog):
    trainer = runs["2of4-bert"]["trainer"]
    with caplog.at_level(logging.INFO, logger="smart_hf.training.callbacks"):
        trainer.smart_callback.on_train_end(trainer.args, trainer.state, trainer.control, model=trainer.model)
    assert "sparsity verified" in caplog.text
    with pytest.raises(ValueError, match="verify_sparsity"):
        SmartCallback(verify_sparsity="sometimes")


# ------------------------------------------------------------------------------- the checker catches what is wrong
def test_sparsity_lost_by_stock_fine_tuning_of_a_squashed_model_is_caught(runs, tmp_path):
    """The commonest loss: fine-tuning the exported model with a stock Trainer refills the zeros."""
    case = "block4x4-vit"
    runs[case]["trainer"].save_model(str(tmp_path / "pruned"))
    loaded = tiny_models.MODELS["vit"][2].from_pretrained(str(tmp_path / "pruned"))
    check_sparsity(loaded)
    optimizer = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    loaded(**inputs(case), labels=torch.tensor([0, 1, 2])).loss.backward()
    optimizer.step()
    with pytest.raises(ValueError) as err:
        check_sparsity(loaded)
    message, blocks = str(err.value), targeted_weights(runs[case]["trainer"].model) // 16
    assert "squashed model" in message and "global budget over 12 layers (sparsity 0.5)" in message
    assert f"expected {blocks // 2} kept units of 16 weights, found {blocks}" in message  # every block refilled
    assert "vit.layers.1.mlp.fc2: 0 zero weights" in message and "the zeros were refilled" in message
    loaded.save_pretrained(str(tmp_path / "refilled"))
    with pytest.raises(ValueError, match="vit.layers.0.attention.q_proj"):
        check_sparsity(str(tmp_path / "refilled"))


def test_a_tampered_mask_breaks_the_budget_with_expected_vs_found():
    case = "channel-vit"
    model = sh.prepare_model(build_model(case), sh.SmartConfig(pattern="channel", sparsity=0.5, budget="layer"))
    sh.harden(model)
    fc1 = model.vit.layers[1].mlp.fc1
    units = fc1.smart_mask.numel()
    fc1.smart_mask[(fc1.smart_mask == 0).nonzero()[0]] = 1.0  # one more channel kept than the budget allows
    with pytest.raises(ValueError, match=rf"vit\.layers\.1\.mlp\.fc1 \(sparsity 0.5\): expected {units // 2} kept "
                       rf"units, found {units // 2 + 1}"):  # fmt: skip
        check_sparsity(model)
    fc1.smart_mask[0] = 0.5
    with pytest.raises(ValueError, match="mask is not binary: 1 units"):
        check_sparsity(model)


def test_a_tampered_nm_mask_is_named():
    case = "2of4-bert"
    model = sh.prepare_model(build_model(case), smart_config(case))
    sh.harden(model)
    query = model.bert.encoder.layer[0].attention.self.query
    query.smart_mask[3] = 1.0  # all 4 of one group kept
    with pytest.raises(ValueError, match=r"attention\.self\.query: 1 mask groups do not keep exactly n=2 of m=4"):
        check_sparsity(model)


def test_the_target_can_be_checked_against_what_was_asked(runs):
    """A model pruned to 50% does not pass as 75%, nor as another pattern."""
    model = runs["block4x4-vit"]["trainer"].model
    blocks = targeted_weights(model) // 16
    with pytest.raises(ValueError, match=rf"sparsity 0.75\): expected {blocks // 4} kept units of 16 weights, "
                       rf"found {blocks // 2}"):  # fmt: skip
        check_sparsity(model, sh.SmartConfig(block_shape=[4, 4], sparsity=0.75))
    with pytest.raises(ValueError, match=r"pruned as block \[4, 4\], but the config asks for block \[8, 8\]"):
        check_sparsity(model, sh.SmartConfig(block_shape=[8, 8], sparsity=0.5))
    assert check_sparsity(model, smart_config("block4x4-vit"))["verified"]


def test_state_dict_and_error_paths(runs, tmp_path):
    squashed = sh.squash(copy.deepcopy(runs["2of4-bert"]["trainer"].model))
    state_dict, meta = squashed.state_dict(), squashed.config.smart_hf
    assert check_sparsity(state_dict, meta)["total"] == check_sparsity(squashed)["total"]
    name = next(iter(meta["layers"]))
    state_dict[f"{name}.weight"] = torch.ones_like(state_dict[f"{name}.weight"])
    with pytest.raises(ValueError, match=rf"{name}: .* groups of 4 hold more than 2 non-zero weights"):
        check_sparsity(state_dict, meta)
    with pytest.raises(ValueError, match="needs its metadata"):
        check_sparsity(state_dict)
    with pytest.raises(ValueError, match="was it pruned with smart_hf"):
        check_sparsity(build_model("2of4-bert"))
    build_model("2of4-bert").save_pretrained(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not written by smart_hf.save_pruned"):
        check_sparsity(str(tmp_path / "plain"))
    with pytest.raises(TypeError, match="SmartConfig"):
        check_sparsity(squashed, 0.5)


def test_a_wrapped_model_is_checked_through_its_module(runs):
    """DDP / accelerate wrap the prepared model; the checker follows ``.module`` like the lifecycle functions."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = runs["channel-vit"]["trainer"].model
    assert check_sparsity(Wrapper(model))["total"] == check_sparsity(model)["total"]


def test_mixed_patterns_and_the_layer_guard():
    """N:M overrides next to a global block budget; a global budget that starves a layer below its guard fails."""
    model = sh.prepare_model(
        build_model("block4x4-vit"),
        sh.SmartConfig(overrides=[{"regex": r"vit\.layers\.1\.mlp\..*", "pattern": "nm"}], min_layer_density=0.1),
    )
    sh.harden(model)
    result = check_sparsity(model)
    assert [b["kind"] for b in result["budget"]] == ["global"] and len(result["budget"][0]["layers"]) == 10
    fc2 = model.vit.layers[0].mlp.fc2
    kept = fc2.smart_mask.nonzero()
    moved = kept[: max(1, len(kept) - 1)]  # keep the budget total, but leave fc2 with one block (guard: ceil(0.1 U))
    other = model.vit.layers[0].mlp.fc1.smart_mask
    free = (other == 0).nonzero()[: len(moved)]
    fc2.smart_mask[tuple(moved.t())] = 0.0
    other[tuple(free.t())] = 1.0
    guard = math.ceil(0.1 * fc2.smart_mask.numel())
    with pytest.raises(ValueError, match=rf"mlp\.fc2: keeps 1 units, the min_layer_density guard keeps >= {guard}"):
        check_sparsity(model)


def test_a_plain_save_pretrained_of_a_searching_model_is_flagged(tmp_path):
    """`save_pretrained` (instead of `save_pruned`) on a model still searching stores dense weights: stock loading
    works and looks fine, so the checker is what says no pruning happened."""
    case = "block4x4-vit"
    model = sh.prepare_model(build_model(case), smart_config(case))
    model.save_pretrained(str(tmp_path))
    loaded = tiny_models.MODELS["vit"][2].from_pretrained(str(tmp_path))
    assert all((loaded.get_submodule(n).weight != 0).all() for n in sh.get_smart_state(model).targeted_module_names)
    with pytest.raises(ValueError, match="not written by smart_hf.save_pruned"):
        check_sparsity(str(tmp_path))


def test_load_best_model_at_end_only_picks_a_hardened_checkpoint(tmp_path):
    case = "block4x4-vit"
    evaluations = iter(range(100))

    def first_is_best(_prediction):  # a metric that favours the earliest evaluation, i.e. a dense checkpoint
        return {"earliness": -float(next(evaluations))}

    args = run_args(
        tmp_path, pretrain_steps=4, eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4,
        load_best_model_at_end=True, metric_for_best_model="earliness", greater_is_better=True,
    )  # fmt: skip
    trainer = SmartTrainer(
        model=build_model(case), args=args, smart_config=smart_config(case), train_dataset=dataset(case),
        eval_dataset=dataset(case, 16), compute_metrics=first_is_best,
    )  # fmt: skip
    after = StepInvariants()
    trainer.add_callback(after)
    trainer.train()
    check_sparsity(trainer.model)  # exact either way: on_train_end hardens whatever was loaded
    hardened_at = 4 + SEARCH_STEPS  # the first checkpoint whose model is hardened is the next save after this step
    assert int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]) > hardened_at
    assert all(torch.equal(a, b) for a, b in zip(masks_of(trainer.model), after.masks_at_hardening))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_2of4_semi_structured_kernels_keep_exact_sparsity_on_cuda():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256
    )
    model = sh.squash(sh.prepare_model(BertForSequenceClassification(config).eval(), smart_config("2of4-bert")))
    model = model.cuda().half()
    reference = check_sparsity(model)
    assert sh.to_sparse_kernels(model, format="2:4")["converted"]
    assert check_sparsity(model)["total"] == reference["total"]  # zeros counted through the compressed weights


def test_a_non_finite_pruned_weight_is_zeroed_by_remasking():
    case = "block4x4-vit"
    model = sh.prepare_model(build_model(case), smart_config(case))
    sh.harden(model)
    layer = sh.get_smart_state(model).layers[0]
    pruned = (layer.smart_layout.expand(1 - layer.smart_mask).expand_as(layer.weight) > 0).nonzero()
    with torch.no_grad():  # what one step with an overflowing gradient leaves behind
        layer.weight[tuple(pruned[0])] = float("inf")
        layer.weight[tuple(pruned[1])] = float("nan")
    sh.apply_hard_masks_(model)
    assert check_sparsity(model)["total"]["zeros"] * 2 == targeted_weights(model)
