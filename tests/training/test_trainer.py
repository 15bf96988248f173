"""SmartTrainer / SmartCallback: the three stages inside the HF Trainer on a tiny ViT (CPU, seconds)."""

import inspect

import pytest
import tiny_models
import torch
from datasets import Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments, ViTForImageClassification

import smart_hf as sh
from smart_hf.training.callbacks import SmartCallback
from smart_hf.training.trainer import SmartTrainer
from smart_hf.training.training_args import SmartTrainingArguments


def tiny_vit(seed=0):
    torch.manual_seed(seed)  # the same initial weights in runs that are compared
    return tiny_models.tiny_vit()


def tiny_dataset(n=48):
    g = torch.Generator().manual_seed(1)
    return Dataset.from_dict(
        {
            "pixel_values": torch.randn(n, 3, 16, 16, generator=g).numpy(),
            "labels": torch.randint(0, 3, (n,), generator=g).numpy(),
        }
    ).with_format("torch")


def smart_args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        max_steps=24,
        per_device_train_batch_size=8,
        pretrain_steps=4,
        search_steps=10,
        logging_steps=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        score_learning_rate=5e-2,
        seed=0,
        data_seed=0,
        log_hardening_jump=False,
        save_plots=False,
    )
    base.update(kw)
    return SmartTrainingArguments(**base)


class Recorder(TrainerCallback):
    """Records, after every optimizer step, the stage and whether pruned weights are exactly zero."""

    def __init__(self):
        self.rows = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        smart = sh.get_smart_state(model)
        zero_ok = None
        if smart.is_hard:
            zero_ok = all(
                bool(
                    (layer.weight[layer.smart_layout.expand(layer.smart_mask).expand_as(layer.weight) == 0] == 0).all()
                )
                for layer in smart.layers
            )
        self.rows.append((state.global_step, smart.mode_name, zero_ok))


def test_three_stage_run(tmp_path):
    model = tiny_vit()
    trainer = SmartTrainer(
        model=model, args=smart_args(tmp_path), smart_config=sh.SmartConfig(sparsity=0.5), train_dataset=tiny_dataset()
    )
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    smart = sh.get_smart_state(trainer.model)
    modes = [mode for _, mode, _ in recorder.rows]
    assert modes[:4] == ["dense"] * 4 and modes[4:14] == ["soft"] * 10 and modes[14:] == ["hard"] * 10
    assert all(ok for _, mode, ok in recorder.rows if mode == "hard")
    report = sh.sparsity_report(trainer.model)
    assert report["valid"] and abs(report["total"]["sparsity"] - 0.5) < 16 / report["total"]["weights"]
    for layer in smart.layers:
        assert set(layer.smart_mask.unique().tolist()) <= {0.0, 1.0}
    # the soft mask was already (almost) binary when it was hardened: the search ended where the hard mask starts
    (at_hardening,) = [
        e["smart/fractionality_at_hardening"]
        for e in trainer.state.log_history
        if "smart/fractionality_at_hardening" in e
    ]
    assert at_hardening < 1e-3


def test_every_score_changes_during_search(tmp_path):
    model = tiny_vit()
    trainer = SmartTrainer(
        model=model,
        args=smart_args(tmp_path, pretrain_steps=0, max_steps=10, search_steps=10),
        smart_config=sh.SmartConfig(sparsity=0.5),
        train_dataset=tiny_dataset(),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.endswith("smart_scores")}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and all(not torch.equal(before[n], after[n]) for n in before)


def test_schedule_advances_per_optimizer_step(tmp_path):
    """With gradient accumulation 3, 12 optimizer steps still mean 12 temperature updates."""
    temps = []

    class Temp(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            temps.append(float(sh.get_smart_state(model).temperature))

    args = smart_args(
        tmp_path,
        pretrain_steps=0,
        max_steps=12,
        search_steps=12,
        gradient_accumulation_steps=3,
        per_device_train_batch_size=4,
    )
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=args,
        smart_config=sh.SmartConfig(temperature_schedule="exponential"),
        train_dataset=tiny_dataset(),
        callbacks=[Temp()],
    )
    trainer.train()
    # tau_start="auto" (the default): the temperature buffer is relative to each group's start, 1 -> tau_end
    expected = [sh.temperature_at(s, 12, 1.0, sh.SmartConfig().tau_end, "exponential") for s in range(12)]
    assert len(temps) == 12 and torch.allclose(torch.tensor(temps), torch.tensor(expected), rtol=1e-6)


def test_callback_in_plain_trainer_matches_smart_trainer(tmp_path):
    config = sh.SmartConfig(sparsity=0.5)
    smart = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path / "a", weight_decay=0.0, score_learning_rate=1e-3),
        smart_config=config,
        train_dataset=tiny_dataset(),
    )
    smart.train()

    plain_model = sh.prepare_model(tiny_vit(), config)
    sh.set_mode(plain_model, "dense")
    plain_args = TrainingArguments(
        output_dir=str(tmp_path / "b"),
        max_steps=24,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        data_seed=0,
        weight_decay=0.0,
    )
    plain = Trainer(
        model=plain_model,
        args=plain_args,
        train_dataset=tiny_dataset(),
        callbacks=[SmartCallback(pretrain_steps=4, search_steps=10, squash_at_end=False, save_pruned_to=None)],
    )
    plain.train()
    masks_a = [layer.smart_mask for layer in sh.get_smart_state(smart.model).layers]
    masks_b = [layer.smart_mask for layer in sh.get_smart_state(plain.model).layers]
    assert all(torch.equal(a, b) for a, b in zip(masks_a, masks_b))


def test_save_model_is_stock_loadable(tmp_path):
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path, max_steps=16),
        smart_config=sh.SmartConfig(sparsity=0.5),
        train_dataset=tiny_dataset(),
    )
    trainer.train()
    out = tmp_path / "final"
    trainer.save_model(str(out))
    loaded = ViTForImageClassification.from_pretrained(out)
    x = torch.randn(2, 3, 16, 16)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, trainer.model(pixel_values=x).logits, atol=1e-5)
    assert (out / "smart_config.json").is_file() and (out / "smart_sparsity.json").is_file()
    assert sh.sparsity_report(loaded)["valid"]


def test_zero_search_steps_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="search_steps"):
        smart_args(tmp_path, search_steps=0)


def checkpointing_trainer(output_dir, save_steps, seed=0, callbacks=None):
    """A 50% SMART run that checkpoints every ``save_steps``; resumed runs start from other weights (``seed``)."""
    return SmartTrainer(
        model=tiny_vit(seed=seed),
        args=smart_args(output_dir, save_strategy="steps", save_steps=save_steps, logging_steps=2),
        smart_config=sh.SmartConfig(sparsity=0.5),
        train_dataset=tiny_dataset(),
        callbacks=callbacks,
    )


def same_masks(a, b) -> bool:
    pairs = zip(sh.get_smart_state(a.model).layers, sh.get_smart_state(b.model).layers)
    return all(torch.equal(x.smart_mask, y.smart_mask) for x, y in pairs)


@pytest.mark.parametrize("resume_step", [8, 18], ids=["mid-search", "mid-finetune"])
def test_resume_reproduces_uninterrupted_run(tmp_path, resume_step):
    """A run resumed from a checkpoint ends with the same masks and logs the same losses as the uninterrupted one."""
    full = checkpointing_trainer(tmp_path / "full", resume_step)
    full.train()
    resumed = checkpointing_trainer(tmp_path / "resumed", resume_step, seed=123)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{resume_step}"))
    assert same_masks(full, resumed)

    def losses(trainer):
        return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and e["step"] > resume_step}

    expected, got = losses(full), losses(resumed)
    assert expected.keys() == got.keys() and expected
    for step in expected:
        assert abs(expected[step] - got[step]) < 1e-4 * max(1.0, abs(expected[step])), step


@pytest.mark.parametrize("as_dict", [False, True], ids=["one-eval-set", "dict-of-eval-sets"])
def test_hardening_logs_the_eval_loss_jump(tmp_path, as_dict):
    data = tiny_dataset(16)
    eval_dataset = {"validation": data, "test": data} if as_dict else data
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path, max_steps=16, log_hardening_jump=True, eval_strategy="steps", eval_steps=100),
        smart_config=sh.SmartConfig(),
        train_dataset=tiny_dataset(),
        eval_dataset=eval_dataset,
    )
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "smart/eval_loss_before_hardening" in e]
    assert entry["smart/eval_loss_before_hardening"] > 0 and entry["smart/eval_loss_after_hardening"] > 0
    assert trainer.dense_metrics is not None  # evaluated on the dense model at the start of the search


def test_resume_true_skips_a_checkpoint_killed_mid_save(tmp_path, caplog):
    """``checkpoint-16`` without ``trainer_state.json`` (what a kill during the save leaves) is skipped by
    ``resume_from_checkpoint=True``; the run resumes from ``checkpoint-8`` and ends with the uninterrupted masks."""
    import shutil

    full = checkpointing_trainer(tmp_path / "full", 8)
    full.train()
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full" / "checkpoint-8", out / "checkpoint-8")
    shutil.copytree(tmp_path / "full" / "checkpoint-16", out / "checkpoint-16")
    (out / "checkpoint-16" / "trainer_state.json").unlink()
    steps_run = Recorder()
    resumed = checkpointing_trainer(out, 8, seed=123, callbacks=[steps_run])
    with pytest.raises(ValueError, match="resume_from_checkpoint=True"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-16"))
    with caplog.at_level("WARNING", logger="smart_hf.training.trainer"):
        resumed.train(resume_from_checkpoint=True)
    assert "checkpoint-16: incomplete" in caplog.text
    assert steps_run.rows[0][0] == 9  # the first optimizer step after checkpoint-8, not after checkpoint-16
    assert same_masks(full, resumed)


def test_resume_true_without_a_complete_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    trainer = SmartTrainer(
        model=tiny_vit(), args=smart_args(tmp_path), smart_config=sh.SmartConfig(), train_dataset=tiny_dataset()
    )
    with pytest.raises(ValueError, match="found no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def _callback_trainer(tmp_path, callback, model=None, **kw):
    model = model if model is not None else sh.prepare_model(tiny_vit(), sh.SmartConfig(sparsity=0.5))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=12,
        per_device_train_batch_size=8,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        **kw,
    )
    return Trainer(model=model, args=args, train_dataset=tiny_dataset(), callbacks=[callback])


def test_callback_users_get_a_stock_artifact(tmp_path):
    """A stock Trainer with SmartCallback, used as any Trainer: the pruned artifact appears in output_dir/pruned,
    and the Trainer's own save_model() writes plain, stock-loadable pruned weights (the callback squashed the model
    at the end of training), never smart_scores / smart_mask / smart_state keys."""
    callback = SmartCallback(search_steps=6)
    trainer = _callback_trainer(tmp_path, callback)
    trainer.train()
    assert callback.pruned_dir == str(tmp_path / "pruned")
    sh.check_sparsity(callback.pruned_dir)
    trainer.save_model(str(tmp_path / "saved"))
    for folder in (tmp_path / "pruned", tmp_path / "saved"):
        loaded = ViTForImageClassification.from_pretrained(folder)
        assert not any(k.startswith("smart_") or ".smart_" in k for k in loaded.state_dict())
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, trainer.model.state_dict()[key]), key
    sh.check_sparsity(str(tmp_path / "saved"))
    assert not hasattr(trainer.model, "smart_state")
    with pytest.raises(ValueError, match="squash_at_end=False"):
        trainer.train()


def test_callback_can_keep_the_smart_state(tmp_path):
    callback = SmartCallback(search_steps=6, save_pruned_to=None, squash_at_end=False)
    trainer = _callback_trainer(tmp_path, callback)
    trainer.train()
    assert callback.pruned_dir is None and not (tmp_path / "pruned").exists()
    assert sh.get_smart_state(trainer.model).is_hard


class EvalSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_hardening_jump_runs_no_evaluation_the_user_did_not_ask_for(tmp_path):
    """log_hardening_jump=True (the default) with eval_strategy='no': no evaluation runs at the hardening step
    (pretrain 4 + search 10), no jump is logged."""
    counter = EvalSteps()
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path, max_steps=16, log_hardening_jump=True, eval_strategy="no"),
        smart_config=sh.SmartConfig(),
        train_dataset=tiny_dataset(),
        eval_dataset=tiny_dataset(16),
        callbacks=[counter],
    )
    trainer.train()
    assert 14 not in counter.steps
    assert not any("smart/eval_loss_before_hardening" in e for e in trainer.state.log_history)


class EvaluatedStates(TrainerCallback):
    """(step, mask mode, eval set) of every evaluation: which model state each one saw."""

    def __init__(self):
        self.rows = []

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        (loss_key,) = [k for k in metrics if k.endswith("_loss")]
        self.rows.append((state.global_step, sh.get_smart_state(model).mode_name, loss_key))


@pytest.mark.parametrize(
    ("eval_steps", "as_dict"),
    [(7, False), (100, False), (7, True)],
    ids=["scheduled-at-hardening", "none-scheduled-there", "dict-of-eval-sets"],
)
def test_hardening_evaluates_each_model_state_once(tmp_path, eval_steps, as_dict):
    """Hardening at step 14 (pretrain 4 + search 10): the soft masks are evaluated once -- by the scheduled evaluation
    of step 14 when there is one, else for the jump -- and the hard masks once; the jump reports exactly those two
    losses, and an extra evaluation for it reads only the first eval set."""
    data = tiny_dataset(16)
    states = EvaluatedStates()
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path, max_steps=16, log_hardening_jump=True, eval_strategy="steps", eval_steps=eval_steps),
        smart_config=sh.SmartConfig(),
        train_dataset=tiny_dataset(),
        eval_dataset={"validation": data, "test": data} if as_dict else data,
        callbacks=[states],
    )
    trainer.train()
    key = "eval_validation_loss" if as_dict else "eval_loss"
    at_hardening = [(mode, k) for step, mode, k in states.rows if step == 14]
    scheduled_test = [("soft", "eval_test_loss")] if as_dict and eval_steps == 7 else []
    assert sorted(at_hardening) == sorted([("hard", key), ("soft", key), *scheduled_test])
    logged = [e for e in trainer.state.log_history if e.get("step") == 14 and key in e]
    assert len(logged) == 2  # the soft and the hard evaluation, each logged once
    (jump,) = [e for e in trainer.state.log_history if "smart/eval_loss_before_hardening" in e]
    assert jump["smart/eval_loss_before_hardening"] == logged[0][key]
    assert jump["smart/eval_loss_after_hardening"] == logged[1][key]
    assert len(states.rows) == len(set(states.rows))  # no model state is evaluated twice on one set


def test_smart_trainer_score_groups_default_per_kind_and_explicit(tmp_path):
    """Unset score_learning_rate: the scores get score_parameter_groups' rates (0.2 for N:M, 1.0 for blocks), no
    weight decay; a number is used for every score; the weights keep the Trainer's own groups and rate."""
    config = sh.SmartConfig(overrides=[{"regex": r".*fc1", "pattern": "nm"}])
    for score_lr, expected in [(None, [0.2, 1.0]), (0.03, [0.03])]:
        trainer = SmartTrainer(
            model=tiny_vit(),
            args=smart_args(tmp_path, score_learning_rate=score_lr),
            train_dataset=tiny_dataset(),
            smart_config=config,
        )
        groups = trainer.create_optimizer().param_groups
        scores = {id(layer.smart_scores) for layer in sh.get_smart_state(trainer.model).layers}
        score_groups = [g for g in groups if {id(p) for p in g["params"]} <= scores]
        assert sorted(g["lr"] for g in score_groups) == expected
        assert all(g["weight_decay"] == 0.0 for g in score_groups)
        assert sum(len(g["params"]) for g in score_groups) == len(scores)
        assert all(g["lr"] == 1e-3 for g in groups if g not in score_groups)


def _activation_model(dataset):
    config = sh.SmartConfig(score_init="activation", calibration_batches=2)
    return sh.prepare_model(tiny_vit(), config, calibration_data=[{"pixel_values": dataset[:8]["pixel_values"]}])


def test_smart_trainer_calibrates_a_prepared_activation_model_for_the_search(tmp_path):
    """A model prepared with ``score_init="activation"`` re-initialises its scores on calibration batches when the
    search begins (after the dense stage); SmartTrainer takes them from the training data, as it does for a model
    it prepares itself (before, the run failed at the first search step, after the dense steps)."""
    dataset = tiny_dataset()
    trainer = SmartTrainer(model=_activation_model(dataset), args=smart_args(tmp_path), train_dataset=dataset)
    batches = trainer.smart_callback.calibration_data
    assert len(batches) == 2 and batches[0]["pixel_values"].shape == (8, 3, 16, 16)
    trainer.train()
    assert sh.get_smart_state(trainer.model).is_hard


def test_callback_without_calibration_for_activation_scores_fails_before_the_dense_stage(tmp_path):
    """SmartCallback in a plain Trainer cannot take batches itself: an activation-scored model without
    ``calibration_data`` stops at the start of training with the fix, not after the dense steps; with batches it
    runs through the search."""
    dataset = tiny_dataset()  # the data _callback_trainer trains on
    callback = SmartCallback(pretrain_steps=2, search_steps=4)
    trainer = _callback_trainer(tmp_path, callback, model=_activation_model(dataset))
    with pytest.raises(ValueError, match=r"pass SmartCallback\(calibration_data="):
        trainer.train()
    assert trainer.state.global_step == 0
    batches = [{"pixel_values": dataset[:8]["pixel_values"]}]
    callback = SmartCallback(
        pretrain_steps=2, search_steps=4, calibration_data=batches, save_pruned_to=None, squash_at_end=False
    )
    trainer = _callback_trainer(tmp_path, callback, model=_activation_model(dataset))
    trainer.train()
    assert sh.get_smart_state(trainer.model).is_hard


def test_the_private_trainer_hook_smart_trainer_overrides_is_unchanged():
    """`SmartTrainer.save_model` tells the Trainer's checkpoint saves from artifact saves by the stock Trainer's
    private ``_internal_call`` parameter (no documented hook does). If transformers renames it or stops passing it from
    its checkpointing, this fails here instead of checkpoints silently becoming pruned artifacts."""
    parameter = inspect.signature(Trainer.save_model).parameters.get("_internal_call")
    assert parameter is not None and parameter.default is False
    assert list(inspect.signature(SmartTrainer.save_model).parameters) == list(
        inspect.signature(Trainer.save_model).parameters
    )
    assert "self.save_model(output_dir, _internal_call=True)" in inspect.getsource(Trainer._save_checkpoint)


def test_smart_trainer_draws_labelled_batches_for_fisher_scores(tmp_path):
    """``score_init="fisher"`` calibrates on the first training batches (labels included) when SmartTrainer prepares
    the model, and again when the search begins after the dense stage."""
    dataset = tiny_dataset()
    trainer = SmartTrainer(
        model=tiny_vit(),
        args=smart_args(tmp_path),
        train_dataset=dataset,
        smart_config=sh.SmartConfig(pattern="coupled", sparsity=0.5, score_init="fisher", calibration_batches=2),
    )
    batches = trainer.smart_callback.calibration_data
    assert len(batches) == 2 and "labels" in batches[0]
    trainer.train()
    assert sh.get_smart_state(trainer.model).is_hard
