"""Any task head works, not only classification: tiny YOLOS (detection) and SegFormer (segmentation) runs."""

import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    YolosConfig,
    YolosForObjectDetection,
)

import smart_hf as sh
from smart_hf.training.trainer import SmartTrainer
from smart_hf.training.training_args import SmartTrainingArguments


def _args(tmp_path):
    return SmartTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=10,
        pretrain_steps=2,
        search_steps=4,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        remove_unused_columns=False,
        save_plots=False,
        log_hardening_jump=False,
    )


def _detection_data(n=8):
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        boxes = torch.rand(2, 4, generator=g) * 0.4 + 0.3  # (cx, cy, w, h) normalised
        rows.append(
            {
                "pixel_values": torch.randn(3, 32, 32, generator=g),
                "labels": {"class_labels": torch.randint(0, 3, (2,), generator=g), "boxes": boxes},
            }
        )
    return rows


def _collate_detection(rows):
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]), "labels": [r["labels"] for r in rows]}


def _check_pruned(trainer, tmp_path, auto_class, inputs):
    report = sh.sparsity_report(trainer.model)
    assert report["valid"] and abs(report["total"]["sparsity"] - 0.5) < 0.01
    trainer.save_model(str(tmp_path / "final"))
    loaded = auto_class.from_pretrained(tmp_path / "final").eval()
    trainer.model.eval()
    with torch.no_grad():
        ours, stock = trainer.model(**inputs), loaded(**inputs)
    assert torch.allclose(ours.logits, stock.logits, atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_yolos_detection(tmp_path):
    torch.manual_seed(0)
    config = YolosConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=[32, 32],
        patch_size=8,
        num_detection_tokens=5,
        num_labels=3,
    )
    model = YolosForObjectDetection(config)
    trainer = SmartTrainer(
        model=model,
        args=_args(tmp_path),
        smart_config=sh.SmartConfig(block_shape=[2, 2]),
        train_dataset=_detection_data(),
        data_collator=_collate_detection,
    )
    names = sh.get_smart_state(trainer.model).targeted_module_names
    assert names and not any("class_labels_classifier" in n or "bbox_predictor" in n for n in names)
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    _check_pruned(trainer, tmp_path, AutoModelForObjectDetection, {"pixel_values": torch.randn(2, 3, 32, 32)})


def test_segformer_segmentation(tmp_path):
    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        decoder_hidden_size=32,
        patch_sizes=[7, 3],
        strides=[4, 2],
        mlp_ratios=[2, 2],
        num_labels=3,
    )
    model = SegformerForSemanticSegmentation(config)
    g = torch.Generator().manual_seed(0)
    data = [
        {"pixel_values": torch.randn(3, 32, 32, generator=g), "labels": torch.randint(0, 3, (32, 32), generator=g)}
        for _ in range(8)
    ]
    trainer = SmartTrainer(
        model=model, args=_args(tmp_path), smart_config=sh.SmartConfig(block_shape=[2, 2]), train_dataset=data
    )
    names = sh.get_smart_state(trainer.model).targeted_module_names
    assert names and not any("decode_head" in n for n in names)
    trainer.train()
    _check_pruned(trainer, tmp_path, AutoModelForSemanticSegmentation, {"pixel_values": torch.randn(2, 3, 32, 32)})
