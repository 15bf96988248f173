"""SMART in a plain accelerate training loop (no Trainer): `prepare_model`, the stage driver `SmartStages` and
`save_pruned`.

    python examples/accelerate_loop.py --smoke                        # 4x4 blocks on a ViT (digits), ~20 s on CPU
    python examples/accelerate_loop.py --smoke --task bert_2of4       # 2:4 on a BERT (synthetic token data)
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml examples/accelerate_loop.py
    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml \
        --main_process_port 29611 examples/accelerate_loop.py --smoke --cpu    # 2 CPU processes (gloo)

Stages (`SmartStages`): dense pre-train -> structure search (soft masks, falling temperature) -> harden (and the
optimizer's moments of pruned weights zeroed) -> fine-tune with the hard mask -> save a stock-loadable model.
Why every rank ends with the same masks: the scores are ordinary parameters (DDP all-reduces their gradients),
activation statistics are all-reduced inside `prepare_model` / `reinit_scores`, the dynamic schedule's jitter is
seeded identically on every rank and `hard_topk` breaks ties by index. ``--dump_dir`` writes each rank's masks and
final weights so tests can compare them.
"""

import argparse
import os

import datasets
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

import smart_hf as sh
from smart_hf.demo_data import load_digits_splits

TASKS = ("vit_blocks", "bert_2of4")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=TASKS, default="vit_blocks", help="4x4 blocks on a ViT, or 2:4 on a BERT")
    p.add_argument("--smoke", action="store_true", help="tiny model and 30 steps (tests, CI)")
    p.add_argument("--cpu", action="store_true", help="force CPU (DDP over gloo under accelerate launch)")
    p.add_argument("--output_dir", default="outputs/accelerate_loop")
    p.add_argument("--dump_dir", default=None, help="write rank<i>.pt with this rank's masks (for tests)")
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--per_device_batch_size", type=int, default=None)
    p.add_argument("--sparsity", type=float, default=0.5, help="share of 4x4 blocks pruned (vit_blocks)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    size = (
        dict(steps=30, batch=8, image=16, hidden=32, layers=2)
        if args.smoke
        else dict(steps=600, batch=32, image=32, hidden=64, layers=4)
    )
    args.max_steps = args.max_steps or size["steps"]
    args.per_device_batch_size = args.per_device_batch_size or size["batch"]
    args.image_size, args.hidden, args.layers = size["image"], size["hidden"], size["layers"]
    return args


def vit_blocks(args):
    """A small ViT on the digits, 4x4 blocks of every linear layer pruned to ``--sparsity`` (activation scores)."""
    data = load_digits_splits(image_size=args.image_size)
    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=2,
            intermediate_size=2 * args.hidden,
            image_size=args.image_size,
            patch_size=4,
            num_labels=10,
        )
    )
    config = sh.SmartConfig(pattern="block", block_shape=[4, 4], sparsity=args.sparsity, score_init="activation")
    return model, config, data, ["pixel_values"]


def bert_2of4(args, vocab: int = 64, length: int = 16):
    """A small BERT classifying synthetic token sequences (is the first half of the vocabulary in the majority?),
    2:4 sparsity on every linear layer of its encoder."""
    generator = torch.Generator().manual_seed(1234)  # the same data on every rank and in every run
    splits = {}
    for name, rows in (("train", 1024), ("test", 256)):
        ids = torch.randint(1, vocab, (rows, length), generator=generator)
        labels = ((ids < vocab // 2).sum(-1) > length // 2).long()
        splits[name] = datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}).with_format("torch")
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=vocab,
            hidden_size=args.hidden,
            num_hidden_layers=args.layers,
            num_attention_heads=2,
            intermediate_size=2 * args.hidden,
            max_position_embeddings=length,
            num_labels=2,
        )
    )
    return model, sh.SmartConfig(pattern="nm", n=2, m=4), datasets.DatasetDict(splits), ["input_ids"]


def forever(loader):
    """Cycle the (sharded) loader; set_epoch reshuffles the same way on every rank."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def cat_masks(model):
    return torch.cat([layer.smart_mask.flatten().clone() for layer in sh.get_smart_state(model).layers])


def weight_and_score_groups(model, lr: float = 1e-3) -> list[dict]:
    """The weights in one group, the scores in theirs (`score_parameter_groups`: 0.2 for N:M, 1.0 for blocks, as
    steps of the start logits, no weight decay). Build the optimizer after `prepare_model`, or the scores are missing
    (`SmartStages` says so)."""
    weights = [p for n, p in model.named_parameters() if not n.endswith("smart_scores")]
    return [{"params": weights, "lr": lr}, *sh.score_parameter_groups(model)]


def main(argv=None):
    args = parse_args(argv)
    # Scores get no gradient in the dense stage and are frozen after hardening: DDP must allow unused parameters.
    accelerator = Accelerator(
        cpu=args.cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
    set_seed(args.seed)  # same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
    model, config, data, input_names = (vit_blocks if args.task == "vit_blocks" else bert_2of4)(args)
    steps = args.max_steps

    # Each rank calibrates on its own share of the same 64 samples: the activation statistics are all-reduced, so
    # the scores (and masks) come out identical on every rank, and equal to a one-process run's up to rounding.
    rank, world = accelerator.process_index, accelerator.num_processes
    share = data["train"].select(range(64)).shard(world, rank, contiguous=False)
    calib = [{k: b[k] for k in input_names} for b in DataLoader(share, batch_size=16 // world)]
    sh.prepare_model(model, config, calibration_data=calib)  # before the optimizer is built
    scores = [p for n, p in model.named_parameters() if n.endswith("smart_scores")]
    optimizer = torch.optim.AdamW(weight_and_score_groups(model))
    loader = DataLoader(
        data["train"],
        batch_size=args.per_device_batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    inner = accelerator.unwrap_model(model)
    # 20% dense, 40% search, 40% fine-tune; the driver checks that the optimizer trains the scores
    stages = sh.SmartStages(
        inner,
        optimizer,
        total_steps=steps,
        pretrain_steps=steps // 5,
        search_steps=(2 * steps) // 5,
        calibration_data=calib,
    )
    record = {"search_scores": [], "hardened": None}
    stages.add_listener("hardened", lambda driver: record.update(hardened=cat_masks(inner)))

    batches = forever(loader)
    for step in range(steps):
        stages.before_step(step)
        loss = model(**next(batches)).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        stages.after_step(step)
        if stages.stage_at(step) == "search":
            record["search_scores"].append(torch.cat([s.detach().flatten().clone() for s in scores]))
        if step % 10 == 0 or step == steps - 1:
            accelerator.print(
                f"step {step:4d}  loss {accelerator.reduce(loss.detach(), 'mean').item():.4f}  "
                f"stage {stages.stage_at(step)}  tau {sh.get_smart_state(inner).tau:.3g}"
            )
    stages.finish()  # hardens unless the run had a fine-tune stage
    finish(args, accelerator, model, inner, data, record, stages.stages)


def finish(args, accelerator, model, inner, data, record, stages):
    """Test accuracy (each rank evaluates its shard; gather_for_metrics drops the last batch's padding), then the
    pruned model (`save_pruned`), written by the main process."""
    model.eval()
    test = accelerator.prepare(DataLoader(data["test"], batch_size=64))
    correct = total = 0
    with torch.no_grad():
        for batch in test:
            pred, labels = accelerator.gather_for_metrics((model(**batch).logits.argmax(-1), batch["labels"]))
            correct, total = correct + int((pred == labels).sum()), total + len(labels)
    report = sh.sparsity_report(inner)
    accelerator.print(f"test accuracy {correct / total:.3f}  sparsity {report['total']['sparsity']:.4f}")

    final = cat_masks(inner)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:  # squashed, stock-loadable weights with the sparsity report and model card
        sh.save_pruned(inner, args.output_dir, stages=stages, save_plots=False)
    sh.squash(inner)  # in place on every rank, for the dump below
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
        torch.save(
            {
                "world": accelerator.num_processes,
                **record,
                "final": final,
                "state": {k: v.detach().clone() for k, v in inner.state_dict().items()},
                "saved": accelerator.is_main_process,
                "accuracy": correct / total,
            },
            os.path.join(args.dump_dir, f"rank{accelerator.process_index}.pt"),
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
