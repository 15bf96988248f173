"""Under DDP the hard stage still computes with the clean weight, and the masks stay identical across ranks.

DDP re-broadcasts every buffer from rank 0 before each training forward (``broadcast_buffers=True``, the default),
``smart_mask`` included. The hard stage's fast path (`SmartLayerMixin.smart_weight` uses the weight as is when
nothing wrote to the weight or the mask since the last re-masking) keys on the mask's version counter, so a
broadcast that bumped it would silently turn the fast path off on every step. It does not: the coalesced
broadcast writes the buffers' storage without bumping their version counters, so after the first fine-tune step
(whose forward follows hardening, before any re-masking) every targeted layer takes the fast path on every rank.

A real 2-process ``SmartTrainer`` run under ``accelerate launch`` (CPU, gloo; the config in
``recipes/accelerate/cpu_2proc.yaml``); this file is also its worker: ``python tests/test_ddp_fast_path.py OUT``
(``SMART_CHECK_DEVICE=cuda`` trains on the GPUs instead: ``scripts/gpu_check.sh`` launches it with the DDP and FSDP2
recipes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
FINETUNE_STEPS = 4


def worker(out_dir: str) -> None:
    """A 3-stage N:M run; every rank records, per fine-tune forward, how many layers took the fast path."""
    from datasets import Dataset
    from transformers import TrainerCallback, ViTConfig, ViTForImageClassification

    import smart_hf as sh
    from smart_hf.layers import SmartLayerMixin

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16, patch_size=4
    )
    model = ViTForImageClassification(config)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 16, 16, generator=g), torch.randint(0, 2, (32,), generator=g)
    train = Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.numpy()}).with_format("torch")

    calls = []  # (optimizer step, took the fast path) per hard-stage smart_weight call
    step = [0]
    original = SmartLayerMixin.smart_weight

    def spy(self):
        weight = original(self)
        if self._smart_state.is_hard and self.training:
            plain = not hasattr(self.weight, "full_tensor")  # an FSDP2 DTensor has no single storage to compare
            calls.append((step[0], plain and weight.data_ptr() == self.weight.data_ptr()))
        return weight

    SmartLayerMixin.smart_weight = spy

    class StepCounter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step[0] = state.global_step

    args = sh.SmartTrainingArguments(
        output_dir=out_dir,
        max_steps=2 + FINETUNE_STEPS,
        per_device_train_batch_size=4,
        pretrain_steps=0,
        search_steps=2,
        report_to=[],
        use_cpu=os.environ.get("SMART_CHECK_DEVICE", "cpu") == "cpu",
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        save_plots=False,
        dataloader_num_workers=0,
    )
    trainer = sh.SmartTrainer(
        model=model, args=args, smart_config=sh.SmartConfig(pattern="nm"), train_dataset=train, callbacks=[StepCounter()]
    )
    trainer.train()
    smart = sh.get_smart_state(trainer.model)
    torch.save(
        {
            "world": trainer.args.world_size,
            "ddp": type(trainer.model_wrapped).__name__,
            "calls": calls,
            "layers": len(smart.layers),
            "masks": torch.cat([layer.smart_mask.flatten().cpu() for layer in smart.layers]),
            "weights": torch.cat([_whole(layer.weight).detach().flatten().cpu() for layer in smart.layers]),
        },
        os.path.join(out_dir, f"rank{trainer.args.process_index}.pt"),
    )


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_hard_stage_takes_the_clean_weight_fast_path(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
    cmd += ["--num_processes", "2", "--main_process_port", str(_free_port()), __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    dumps = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [d["world"] for d in dumps] == [2, 2], "the processes did not form one process group"
    assert all(d["ddp"] == "DistributedDataParallel" for d in dumps)
    for d in dumps:
        # the first fine-tune forward follows hardening (the weights are not re-masked yet): the masked product
        later = [fast for step, fast in d["calls"] if step > 2]
        assert len(later) == d["layers"] * (FINETUNE_STEPS - 1), d["calls"]
        assert all(later), f"the hard stage left the fast path under DDP: {d['calls']}"
    assert torch.equal(dumps[0]["masks"], dumps[1]["masks"])
    assert torch.equal(dumps[0]["weights"], dumps[1]["weights"])
    assert float(dumps[0]["masks"].mean()) == 0.5  # 2:4


if __name__ == "__main__":
    worker(sys.argv[1])
