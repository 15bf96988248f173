"""Same masks on every rank: SmartTrainer and the plain accelerate loop under 2-process DDP (CPU, gloo).

Each test launches real processes with ``accelerate launch`` (the CPU config in ``recipes/accelerate/cpu_2proc.yaml``
plus ``ACCELERATE_USE_CPU=true``; see that file for the launcher traps) on a free port. Every rank dumps what it
saw to ``rank<i>.pt``; the tests compare the dumps. This file is also the SmartTrainer worker:
``python tests/test_distributed.py trainer OUT_DIR PER_DEVICE_BATCH`` (and ``fisher OUT_DIR``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"
LOOP_SCRIPT = ROOT / "examples" / "accelerate_loop.py"
GLOBAL_BATCH = 8


# ----------------------------------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, args: list[str], nproc: int, timeout: int = 300) -> float:
    """Run ``script`` on ``nproc`` CPU processes (plain python for one); returns the wall time."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if nproc == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        launcher = ["-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
        cmd = [sys.executable, *launcher, "--num_processes", str(nproc), "--main_process_port", str(_free_port())]
        cmd += [str(script), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return time.perf_counter() - start


def _dumps(out: Path, nproc: int) -> list[dict]:
    dumps = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(nproc)]
    assert [d["world"] for d in dumps] == [nproc] * nproc, "the processes did not form one process group"
    return dumps


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert len(a) == len(b) and a
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _assert_exact_block_sparsity(state: dict, names: list[str], sparsity: float) -> None:
    """Exactly ``sparsity`` of the targeted weights are zero, in whole 4x4 blocks."""
    zeros = total = 0
    for name in names:
        w = state[f"{name}.weight"]
        blocks = w.reshape(w.shape[0] // 4, 4, w.shape[1] // 4, 4).abs().sum((1, 3))
        zeros += int((blocks == 0).sum()) * 16
        total += w.numel()
    assert zeros == sparsity * total, (zeros, total)


# ------------------------------------------------------------------------------------------ SmartTrainer worker
def trainer_worker(out_dir: str, per_device_batch: int) -> None:
    """A small 3-stage SmartTrainer run; every rank dumps its masks at every step, after hardening and at the end."""
    from datasets import Dataset
    from transformers import TrainerCallback, ViTConfig, ViTForImageClassification

    import smart_hf as sh
    import smart_hf.training.saves as smart_saves
    from smart_hf.artifact.export import squashed_state_dict
    from smart_hf.artifact.invariants import check_sparsity
    from smart_hf.training.trainer import SmartTrainer
    from smart_hf.training.training_args import SmartTrainingArguments

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=16,
            patch_size=4,
            num_labels=3,
        )
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(80, 3, 16, 16, generator=g), torch.randint(0, 3, (80,), generator=g)
    train = Dataset.from_dict({"pixel_values": x[:64].numpy(), "labels": y[:64].numpy()}).with_format("torch")
    evals = Dataset.from_dict({"pixel_values": x[64:].numpy(), "labels": y[64:].numpy()}).with_format("torch")

    save_calls = []
    original_save = smart_saves.save_pruned

    def counting_save(*args, **kwargs):
        save_calls.append(args[1])
        return original_save(*args, **kwargs)

    smart_saves.save_pruned = counting_save

    class MaskRecorder(TrainerCallback):
        """The soft masks the last training forward used (read from the state's per-forward cache) and, once
        hardened, the hard masks -- after every optimizer step."""

        def __init__(self, inner):
            self.steps, self.hardened, self.last = [], None, None
            inner.register_forward_hook(self._grab, prepend=True)  # runs before the state drops its cache
            self.inner = inner

        def _grab(self, module, args, output):
            smart = sh.get_smart_state(module)
            if module.training and smart.mode_name == "soft" and smart._cache:
                self.last = torch.cat([m.detach().flatten() for gi in sorted(smart._cache) for m in smart._cache[gi]])

        def on_step_end(self, args, state, control, model=None, **kwargs):
            smart = sh.get_smart_state(model)
            if smart.mode_name == "soft":
                self.steps.append(self.last.clone())
            elif smart.is_hard and self.hardened is None:
                self.hardened = torch.cat([layer.smart_mask.flatten() for layer in smart.layers])

    args = SmartTrainingArguments(
        output_dir=out_dir,
        max_steps=20,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=8,
        pretrain_steps=4,
        search_steps=8,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-3,
        score_learning_rate=5e-2,
        seed=0,
        data_seed=0,
        save_plots=False,
        dataloader_num_workers=0,
    )
    trainer = SmartTrainer(
        model=model,
        args=args,
        smart_config=sh.SmartConfig(sparsity=0.5, score_init="activation", calibration_batches=2),
        train_dataset=train,
        eval_dataset=evals,
    )
    recorder = MaskRecorder(trainer.model)
    trainer.add_callback(recorder)
    trainer.train()
    trainer.save_model(os.path.join(out_dir, "pruned"))
    smart = sh.get_smart_state(trainer.model)
    rank = trainer.args.process_index
    torch.save(
        {
            "world": trainer.args.world_size,
            "steps": recorder.steps,
            "hardened": recorder.hardened,
            "final": torch.cat([layer.smart_mask.flatten() for layer in smart.layers]),
            "scores": torch.cat([layer.smart_scores.detach().flatten() for layer in smart.layers]),
            "state": {k: v.detach().clone() for k, v in squashed_state_dict(trainer.model).items()},
            "names": smart.targeted_module_names,
            "save_calls": save_calls,
            "sparsity": sh.sparsity_report(smart)["total"]["sparsity"],
            "verified": check_sparsity(trainer.model)["budget"],
            "verified_at_train_end": trainer.smart_callback.verification["verified"],
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


# ------------------------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """The same global batch (8) on 2 processes (4 each) and on 1 process; the 2-process run is the one checked."""
    runs = {}
    for nproc in (2, 1):
        out = tmp_path_factory.mktemp(f"trainer{nproc}")
        seconds = _launch(Path(__file__), ["trainer", str(out), str(GLOBAL_BATCH // nproc)], nproc)
        runs[nproc] = (out, _dumps(out, nproc), seconds)
    return runs


def test_trainer_masks_identical_on_every_rank(trainer_runs):
    from transformers import AutoModelForImageClassification

    import smart_hf as sh

    out, (r0, r1), _ = trainer_runs[2]
    assert len(r0["steps"]) == 8 and len(r0["steps"]) == len(r1["steps"])
    assert _max_diff(r0["steps"], r1["steps"]) == 0.0  # soft masks, every search step: bitwise equal
    assert torch.equal(r0["scores"], r1["scores"])
    assert torch.equal(r0["hardened"], r1["hardened"]) and torch.equal(r0["final"], r1["final"])
    assert torch.equal(r0["hardened"], r0["final"])  # the hard mask never moves during fine-tuning
    # rank 1's model, squashed, equals the one rank 0 (and only rank 0) wrote
    _assert_same_state(r0["state"], r1["state"])
    assert len(r0["save_calls"]) == 1 and r1["save_calls"] == []
    saved = AutoModelForImageClassification.from_pretrained(out / "pruned")
    loaded = saved.state_dict()
    assert r1["state"].keys() == loaded.keys()
    for key, value in r1["state"].items():
        assert torch.equal(loaded[key], value), key
    # exact sparsity, in whole blocks, on the saved model
    assert r0["sparsity"] == r1["sparsity"] == 0.5
    _assert_exact_block_sparsity(loaded, r0["names"], 0.5)
    assert sh.sparsity_report(saved)["total"]["sparsity"] == 0.5
    # the invariant checker passed on every rank at the end of training, and agrees on the saved folder
    assert r0["verified_at_train_end"] and r1["verified_at_train_end"] and r0["verified"] == r1["verified"]
    assert sh.check_sparsity(out / "pruned")["total"] == sh.check_sparsity(saved)["total"]


def test_two_processes_match_one_process_with_same_global_batch(trainer_runs):
    """Same global batch and data order on 1 and 2 processes: the runs differ only by float rounding (the gradient
    is the mean of two half-batch means, all-reduced). Measured: soft masks within 5e-5, scores within
    3e-6, identical hard masks (0 of 1024 units differ); the bounds below leave room for other platforms."""
    (_, (two, _), _), (_, (one,), _) = trainer_runs[2], trainer_runs[1]
    assert _max_diff(two["steps"], one["steps"]) < 1e-3
    assert float((two["scores"] - one["scores"]).abs().max()) < 1e-3
    differing = int((two["final"] != one["final"]).sum())
    assert differing <= 0.01 * one["final"].numel(), f"{differing} of {one['final'].numel()} mask units differ"


def test_plain_accelerate_loop_two_processes(tmp_path):
    import smart_hf as sh

    dumps = {}
    for nproc in (2, 1):
        out = tmp_path / f"loop{nproc}"
        args = ["--smoke", "--cpu", "--output_dir", str(out / "model"), "--dump_dir", str(out)]
        _launch(LOOP_SCRIPT, [*args, "--per_device_batch_size", str(GLOBAL_BATCH // nproc)], nproc)
        dumps[nproc] = _dumps(out, nproc)
    r0, r1 = dumps[2]
    assert len(r0["search_scores"]) == 12
    assert _max_diff(r0["search_scores"], r1["search_scores"]) == 0.0  # scores (so masks) equal at every step
    assert torch.equal(r0["hardened"], r1["hardened"]) and torch.equal(r0["final"], r1["final"])
    _assert_same_state(r0["state"], r1["state"])
    assert r0["saved"] and not r1["saved"]
    from transformers import AutoModelForImageClassification

    saved = AutoModelForImageClassification.from_pretrained(tmp_path / "loop2" / "model")
    _assert_same_state(saved.state_dict(), r1["state"])
    assert sh.sparsity_report(saved)["total"]["sparsity"] == 0.5
    # one process with the same global batch: the same masks up to rounding-level ties. The scores move ~1 per step
    # (score_parameter_groups: 1.0 for blocks, in start-logit units of magnitude ~10) and Adam turns rounding-level
    # gradients of saturated units into steps, so 12 steps drift by up to ~5e-3 (measured), against moves of ~10
    (one,) = dumps[1]
    assert _max_diff(r0["search_scores"], one["search_scores"]) < 2e-2
    assert int((r0["final"] != one["final"]).sum()) <= 0.01 * one["final"].numel()


def fisher_worker(out_dir: str) -> None:
    """Prepare a coupled BERT with ``score_init="fisher"`` on a calibration batch of this rank's own; dump the
    scores (the Fisher sums are all-reduced, so every rank must get the scores of both batches)."""
    from accelerate import PartialState
    from transformers import BertConfig, BertForSequenceClassification

    import smart_hf as sh

    state = PartialState(cpu=True)  # forms the (gloo) process group under accelerate launch
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=32, num_labels=3)
    )
    ranks = [state.process_index] if state.num_processes > 1 else [0, 1]
    batches = []
    for rank in ranks:
        g = torch.Generator().manual_seed(100 + rank)
        batches.append({"input_ids": torch.randint(0, 100, (4, 8), generator=g),
                        "labels": torch.randint(0, 3, (4,), generator=g)})
    sh.prepare_model(model, sh.SmartConfig(pattern="coupled", sparsity=0.5, score_init="fisher"), batches)
    scores = torch.cat([layer.smart_scores.detach().flatten() for layer in sh.get_smart_state(model).layers])
    torch.save({"world": state.num_processes, "scores": scores}, os.path.join(out_dir, f"rank{state.process_index}.pt"))


def test_fisher_scores_sum_every_rank_calibration_batches(tmp_path):
    """Two ranks, each calibrating on its own batch, get identical scores: those of one process on both batches."""
    (tmp_path / "two").mkdir(), (tmp_path / "one").mkdir()
    _launch(Path(__file__), ["fisher", str(tmp_path / "two")], 2)
    _launch(Path(__file__), ["fisher", str(tmp_path / "one")], 1)
    r0, r1 = _dumps(tmp_path / "two", 2)
    (one,) = _dumps(tmp_path / "one", 1)
    assert torch.equal(r0["scores"], r1["scores"])
    torch.testing.assert_close(r0["scores"], one["scores"], rtol=1e-4, atol=1e-4)


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {
        name: load_config_from_file(str(CPU_CONFIG.parent / f"{name}.yaml")).distributed_type
        for name in ("single_gpu", "multi_gpu", "fsdp", "cpu_2proc")
    }
    assert kinds == {"single_gpu": "NO", "multi_gpu": "MULTI_GPU", "fsdp": "FSDP", "cpu_2proc": "MULTI_GPU"}


if __name__ == "__main__":
    if sys.argv[1] == "trainer":
        trainer_worker(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "fisher":
        fisher_worker(sys.argv[2])
    else:
        raise SystemExit(f"unknown worker {sys.argv[1]!r}")
