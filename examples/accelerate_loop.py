"""SMART in a plain accelerate training loop (no Trainer): the core API alone, on real data (sklearn digits).

    python examples/accelerate_loop.py --smoke                        # one process, ~20 s on CPU
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml examples/accelerate_loop.py
    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml \
        --main_process_port 29611 examples/accelerate_loop.py --smoke --cpu    # 2 CPU processes (gloo)

Stages: dense pre-train -> structure search (soft masks, falling temperature) -> harden -> fine-tune with the hard
mask -> squash and save a stock-loadable model. Why every rank ends with the same masks: the scores are ordinary
parameters (DDP all-reduces their gradients), activation statistics are all-reduced inside `prepare_model` /
`reinit_scores`, the dynamic schedule's jitter is seeded identically on every rank and `hard_topk` breaks ties by
index. ``--dump_dir`` writes each rank's masks and final weights so tests can compare them.
"""

import argparse
import os

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from transformers import ViTConfig, ViTForImageClassification

import smart_hf as sh
from smart_hf.cli.data import load_digits_splits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model and 30 steps (tests, CI)")
    p.add_argument("--cpu", action="store_true", help="force CPU (DDP over gloo under accelerate launch)")
    p.add_argument("--output_dir", default="outputs/accelerate_loop")
    p.add_argument("--dump_dir", default=None, help="write rank<i>.pt with this rank's masks (for tests)")
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--per_device_batch_size", type=int, default=None)
    p.add_argument("--sparsity", type=float, default=0.5)
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


def forever(loader):
    """Cycle the (sharded) loader; set_epoch reshuffles the same way on every rank."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@torch.no_grad()
def zero_pruned_adam_state(model, optimizer):
    """After hardening, zero the Adam moments of pruned weights so nothing pushes them back."""
    for layer in sh.get_smart_state(model).layers:
        for value in optimizer.state.get(layer.weight, {}).values():
            if torch.is_tensor(value) and value.shape == layer.weight.shape:
                value.copy_(layer.smart_layout.apply(value, layer.smart_mask))


def cat_masks(model):
    return torch.cat([layer.smart_mask.flatten().clone() for layer in sh.get_smart_state(model).layers])


def main(argv=None):
    args = parse_args(argv)
    # Scores get no gradient in the dense stage and are frozen after hardening: DDP must allow unused parameters.
    accelerator = Accelerator(
        cpu=args.cpu, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
    set_seed(args.seed)  # same seed on every rank: identical initial weights (DDP also broadcasts rank 0's)
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
    steps = args.max_steps
    pretrain, search = steps // 5, (2 * steps) // 5  # 20% dense, 40% search, 40% fine-tune

    # Each rank calibrates on its own share of the same 64 samples: the activation statistics are all-reduced, so
    # the scores (and masks) come out identical on every rank, and equal to a one-process run's up to rounding.
    rank, world = accelerator.process_index, accelerator.num_processes
    share = data["train"].select(range(64)).shard(world, rank, contiguous=False)
    calib = [{"pixel_values": b["pixel_values"]} for b in DataLoader(share, batch_size=16 // world)]
    config = sh.SmartConfig(pattern="block", block_shape=[4, 4], sparsity=args.sparsity, score_init="activation")
    sh.prepare_model(model, config, calibration_data=calib)  # before the optimizer is built
    if pretrain > 0:
        sh.set_mode(model, "dense")

    scores = [p for n, p in model.named_parameters() if n.endswith("smart_scores")]
    weights = [p for n, p in model.named_parameters() if not n.endswith("smart_scores")]
    # the scores get their own rates (0.2 for N:M, 1.0 for blocks, as steps of the start logits) and no weight decay
    optimizer = torch.optim.AdamW([{"params": weights, "lr": 1e-3}, *sh.score_parameter_groups(model)])
    loader = DataLoader(
        data["train"],
        batch_size=args.per_device_batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    inner = accelerator.unwrap_model(model)  # the lifecycle functions also unwrap DDP themselves

    search_scores, hardened = [], None
    batches = forever(loader)
    for step in range(steps):
        if step == pretrain:  # stage 2: scores from the pre-trained weights, soft masks
            sh.reinit_scores(inner, calib)
            sh.set_mode(inner, "soft")
        if pretrain <= step < pretrain + search:
            sh.update_temperature(model, step - pretrain, search)
        elif step == pretrain + search:  # stage 3: binary masks, frozen scores
            sh.harden(model)
            zero_pruned_adam_state(inner, optimizer.optimizer)
            hardened = cat_masks(inner)
        batch = next(batches)
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if sh.get_smart_state(model).is_hard:  # hard stage: keep pruned weights exactly zero
            sh.apply_hard_masks_(model)
        if pretrain <= step < pretrain + search:
            search_scores.append(torch.cat([s.detach().flatten().clone() for s in scores]))
        if step % 10 == 0 or step == steps - 1:
            accelerator.print(
                f"step {step:4d}  loss {accelerator.reduce(loss.detach(), 'mean').item():.4f}  "
                f"mode {sh.get_smart_state(model).mode_name}  tau {float(inner.smart_state.temperature):.3g}"
            )
    sh.harden(model)  # no-op unless the run had no fine-tune stage

    # Test accuracy: each rank evaluates its shard; gather_for_metrics drops the padding of the last batch.
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
    sh.squash(inner)  # in place on every rank (no collectives); only the main process writes
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        inner.save_pretrained(args.output_dir)
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
        torch.save(
            {
                "world": world,
                "search_scores": search_scores,
                "hardened": hardened,
                "final": final,
                "state": {k: v.detach().clone() for k, v in inner.state_dict().items()},
                "saved": accelerator.is_main_process,
                "accuracy": correct / total,
            },
            os.path.join(args.dump_dir, f"rank{rank}.pt"),
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
