"""`SmartStages` in a plain training loop on a tiny BERT: stage transitions at the right steps, listeners called once,
the optimizer checks, Adam moments of pruned weights zeroed at hardening, hard masks kept exact; `stage_lengths`,
`stage_at` and `distillation_loss` against references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import text_inputs, tiny_bert

import smart_hf as sh
from smart_hf.stages import stage_at, stage_lengths


def _model(**config):
    torch.manual_seed(0)
    return sh.prepare_model(tiny_bert(), sh.SmartConfig(pattern="nm", n=2, m=4, **config))


def _optimizer(model):
    weights = [p for n, p in model.named_parameters() if not n.endswith("smart_scores")]
    return torch.optim.AdamW([{"params": weights, "lr": 1e-2}, *sh.score_parameter_groups(model)])


def _pruned(layer) -> torch.Tensor:
    """True at the pruned entries of ``layer.weight``."""
    return layer.smart_layout.apply(torch.ones_like(layer.weight), layer.smart_mask) == 0


def _run(model, optimizer, stages, steps, seen, drift=0.0):
    """``steps`` optimizer steps; ``drift`` is added to every SMART weight after each step (an optimizer that moves
    pruned weights, e.g. one whose state was not zeroed)."""
    torch.manual_seed(1)
    batch = {**text_inputs(4), "labels": torch.tensor([0, 1, 2, 0])}
    for step in range(steps):
        stages.before_step(step)
        smart = sh.get_smart_state(model)
        seen.append((step, smart.mode_name, smart.tau))
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            for layer in sh.get_smart_state(model).layers:
                layer.weight.add_(drift)
        stages.after_step(step)


def test_stages_in_a_plain_loop():
    model = _model()
    optimizer = _optimizer(model)
    stages = sh.SmartStages(model, optimizer, total_steps=9, pretrain_steps=2, search_steps=4)
    assert stages.stages == (2, 4, 3) and sh.get_smart_state(model).mode_name == "dense"
    events = []
    stages.add_listener("search_begins", lambda d: events.append(("search_begins", sh.get_smart_state(model).mode_name)))
    stages.add_listener("hardening", lambda d: events.append(("hardening", sh.get_smart_state(model).mode_name)))
    stages.add_listener("hardened", lambda d: events.append(("hardened", sh.get_smart_state(model).mode_name)))
    seen = []
    _run(model, optimizer, stages, 9, seen, drift=1e-3)
    assert [mode for _, mode, _ in seen] == ["dense"] * 2 + ["soft"] * 4 + ["hard"] * 3
    taus = [tau for _, mode, tau in seen if mode == "soft"]
    assert all(a > b for a, b in zip(taus, taus[1:]))  # the temperature falls over the search
    # each listener once, at its transition: the model still dense, still soft, then hard
    assert events == [("search_begins", "dense"), ("hardening", "soft"), ("hardened", "hard")]
    assert math.isfinite(stages.fractionality_at_hardening)
    assert [stages.stage_at(s) for s in (0, 1, 2, 5, 6, 100)] == ["pretrain"] * 2 + ["search"] * 2 + ["finetune"] * 2
    stages.finish()  # already hard: nothing happens, no listener fires again
    assert len(events) == 3
    for layer in sh.get_smart_state(model).layers:
        assert not layer.smart_scores.requires_grad
        assert torch.all(layer.weight[_pruned(layer)] == 0)  # re-zeroed after every fine-tune step
        kept = layer.smart_layout.apply(torch.ones_like(layer.weight), layer.smart_mask)
        groups = kept.reshape(-1, 4) if layer.weight.shape[-1] % 4 == 0 else None
        if groups is not None:
            assert torch.all(groups.sum(-1) == 2)  # exactly 2 of every 4 kept
    assert sh.check_sparsity(sh.get_smart_state(model))["total"]["sparsity"] == 0.5


def test_hardening_zeroes_the_adam_moments_of_pruned_weights():
    model = _model()
    optimizer = _optimizer(model)
    stages = sh.SmartStages(model, optimizer, total_steps=6, search_steps=3)
    moments = {}

    def snapshot(name):
        def listener(driver):
            moments[name] = [
                {k: v.clone() for k, v in optimizer.state[layer.weight].items() if v.shape == layer.weight.shape}
                for layer in sh.get_smart_state(model).layers
            ]

        return listener

    stages.add_listener("hardening", snapshot("before"))
    stages.add_listener("hardened", snapshot("after"))
    _run(model, optimizer, stages, 6, [])
    layers = sh.get_smart_state(model).layers
    before = [float(m[k][_pruned(layer)].abs().sum()) for m, layer in zip(moments["before"], layers) for k in m]
    after = [float(m[k][_pruned(layer)].abs().sum()) for m, layer in zip(moments["after"], layers) for k in m]
    assert len(after) == 2 * len(layers) and sum(before) > 0  # exp_avg and exp_avg_sq, non-zero before hardening
    assert after == [0.0] * len(after)


def test_finish_hardens_a_run_that_ends_in_the_search():
    model = _model()
    optimizer = _optimizer(model)
    stages = sh.SmartStages(model, optimizer, total_steps=3, search_fraction=1.0)
    hardened = []
    stages.add_listener("hardened", hardened.append)
    _run(model, optimizer, stages, 3, [])
    assert not sh.get_smart_state(model).is_hard
    stages.finish()
    stages.finish()
    assert sh.get_smart_state(model).is_hard and hardened == [stages]


def test_an_optimizer_without_the_scores_is_an_error_naming_the_fix():
    model = tiny_bert()
    optimizer = torch.optim.AdamW(model.parameters())  # built before prepare_model: no scores in it
    sh.prepare_model(model, sh.SmartConfig(pattern="nm"))
    with pytest.raises(ValueError, match=r"misses the SMART mask scores.*score_parameter_groups\(model\)"):
        sh.SmartStages(model, optimizer, total_steps=10)
    weights = [p for n, p in model.named_parameters() if not n.endswith("smart_scores")]
    with pytest.raises(ValueError, match="score_parameter_groups"):  # the scores left out
        sh.SmartStages(model, torch.optim.AdamW(weights), total_steps=10)


def test_scores_in_the_weights_group_warn_with_the_fix():
    model = _model()
    with pytest.warns(UserWarning, match=r"weights' learning rate and weight decay.*score_parameter_groups"):
        sh.SmartStages(model, torch.optim.AdamW(model.parameters()), total_steps=10)


def test_bad_setups_fail_before_the_first_step():
    model = _model()
    for layer in sh.get_smart_state(model).layers:
        layer.smart_scores.requires_grad_(False)
    with pytest.raises(ValueError, match="scores are frozen"):
        sh.SmartStages(model, None, total_steps=10)
    calibration = [text_inputs(4)]
    model = sh.prepare_model(tiny_bert(), sh.SmartConfig(pattern="nm", score_init="activation"), calibration)
    with pytest.raises(ValueError, match=r"calibration_data=\[batch"):
        sh.SmartStages(model, _optimizer(model), total_steps=10, pretrain_steps=2)
    stages = sh.SmartStages(model, _optimizer(model), total_steps=10, pretrain_steps=2, calibration_data=calibration)
    with pytest.raises(ValueError, match="event must be one of"):
        stages.add_listener("search_ends", print)
    with pytest.raises(ValueError, match="exceed"):
        sh.SmartStages(model, _optimizer(model), total_steps=4, pretrain_steps=2, search_steps=3)


def test_resuming_in_the_search_keeps_soft_masks():
    model = _model()
    stages = sh.SmartStages(model, _optimizer(model), total_steps=10, pretrain_steps=2, start_step=4)
    assert sh.get_smart_state(model).mode_name == "soft"  # not put back in the dense stage
    stages.before_step(4)
    assert sh.get_smart_state(model).mode_name == "soft"


@pytest.mark.parametrize(
    "total, pretrain, search, fraction, expected",
    [(10, 0, None, 0.4, (0, 4, 6)), (10, 2, None, 0.5, (2, 4, 4)), (10, 2, 8, 0.4, (2, 8, 0)), (7, 1, 3, 0.9, (1, 3, 3))],
)
def test_stage_lengths_and_stage_at(total, pretrain, search, fraction, expected):
    stages = stage_lengths(total, pretrain, search, fraction)
    assert stages == expected and sum(stages) == total
    names = [stage_at(step, stages) for step in range(total)]
    assert names == ["pretrain"] * expected[0] + ["search"] * expected[1] + ["finetune"] * expected[2]


def _reference_distillation(student, teacher, t):
    """``T^2 / rows * sum_rows sum_c p_teacher (log p_teacher - log p_student)``, a row per leading position."""
    p_teacher = F.softmax(teacher.double() / t, -1)
    log_ratio = F.log_softmax(teacher.double() / t, -1) - F.log_softmax(student.double() / t, -1)
    return t * t * (p_teacher * log_ratio).sum() / student.reshape(-1, student.shape[-1]).shape[0]


@pytest.mark.parametrize("shape", [(4, 3), (2, 5, 7)])
def test_distillation_loss_matches_the_reference(shape):
    torch.manual_seed(0)
    student, teacher = torch.randn(shape), torch.randn(shape)
    for t in (1.0, 2.0, 3.5):
        got = sh.distillation_loss(student, teacher, t)
        assert torch.allclose(got.double(), _reference_distillation(student, teacher, t), atol=1e-5)
    assert float(sh.distillation_loss(student, student, 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        sh.distillation_loss(student, teacher, 0.0)
    with pytest.raises(ValueError, match="same output head"):
        sh.distillation_loss(student, teacher[..., :-1], 2.0)
