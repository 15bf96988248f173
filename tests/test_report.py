"""sparsity_report: per-layer numbers, the validity check, squashed models (from config.smart_hf)."""

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_vit

from smart_hf import SmartConfig, format_report, get_smart_state, harden, prepare_model, sparsity_report, squash


def test_report_of_a_searching_model_describes_what_harden_would_pick():
    model = prepare_model(tiny_vit(), SmartConfig(sparsity=0.5))
    report = sparsity_report(model)
    assert report["mode"] == "soft" and report["valid"]
    assert report["total"]["sparsity"] == pytest.approx(0.5)
    assert all(row["weights"] > 0 for row in report["layers"])
    assert (get_smart_state(model).layers[0].weight != 0).all()  # the report did not touch the weights
    harden(model)
    assert sparsity_report(model)["total"] == report["total"]


def test_rows_are_named_after_their_modules_with_mixed_groups():
    """N:M overrides and the global group order layers differently from the model: names must still match."""
    model = prepare_model(tiny_vit(), SmartConfig(overrides=[{"regex": r"vit\.layers\.1\.mlp\..*", "pattern": "nm"}]))
    modules = dict(model.named_modules())
    report = sparsity_report(model)
    assert len(report["layers"]) == 12
    for row in report["layers"]:
        module = modules[row["name"]]
        assert row["pattern"] == module.smart_layout.pattern
        assert row["shape"] == list(module.weight.shape)
    squash(model)
    for name, info in model.config.smart_hf["layers"].items():
        assert info["shape"] == list(modules[name].weight.shape)
        assert info["pattern"] == ("nm" if name.startswith("vit.layers.1.mlp") else "block")


def test_validity_catches_a_non_zero_pruned_weight():
    model = prepare_model(tiny_vit(), SmartConfig(block_shape=[4, 4]))
    harden(model)
    assert sparsity_report(model)["valid"]
    fc1 = model.vit.layers[0].mlp.fc1
    row, col = (fc1.smart_mask == 0).nonzero()[0].tolist()
    with torch.no_grad():
        fc1.weight[row * 4 + 1, col * 4 + 2] = 0.5  # one weight inside a pruned block
    report = sparsity_report(model)
    assert not report["valid"]
    bad = [r["name"] for r in report["layers"] if not r["valid"]]
    assert bad == ["vit.layers.0.mlp.fc1"]
    assert "False" in format_report(report)


def test_validity_catches_an_nm_group_with_too_many_non_zeros():
    model = prepare_model(tiny_gpt2(), SmartConfig(pattern="nm"))
    harden(model)
    assert sparsity_report(model)["valid"]
    c_fc = model.transformer.h[0].mlp.c_fc  # Conv1D: weight (in, out), groups run down the rows
    with torch.no_grad():
        c_fc.weight[0:4, 5] = 1.0  # a whole group of 4 inputs of output 5
    assert not sparsity_report(model)["valid"]  # prepared (hard) model

    squash(model)  # bakes the masks in again (the corruption is gone) ...
    assert sparsity_report(model)["valid"]
    with torch.no_grad():  # ... so corrupt the squashed weight: checked from config.smart_hf alone
        model.transformer.h[0].mlp.c_fc.weight[4:8, 7] = 1.0
    report = sparsity_report(model)
    assert report["mode"] == "squashed" and not report["valid"]
    bad = [r["name"] for r in report["layers"] if not r["valid"]]
    assert bad == ["transformer.h.0.mlp.c_fc"]


def test_squashed_report_from_config():
    model = prepare_model(tiny_vit(), SmartConfig(pattern="channel", sparsity=0.25))
    harden(model)
    hard = sparsity_report(model)
    squash(model)
    meta = model.config.smart_hf
    assert meta["sparsity"] == pytest.approx(hard["total"]["sparsity"])
    assert meta["config"]["pattern"] == "channel"
    report = sparsity_report(model)
    assert report["mode"] == "squashed" and report["valid"]
    assert report["total"] == hard["total"]
    for row, hard_row in zip(report["layers"], hard["layers"]):
        assert (row["name"], row["units_kept"], row["zeros"]) == (hard_row["name"], hard_row["units_kept"],
                                                                  hard_row["zeros"])  # fmt: skip


def test_report_errors_and_format():
    with pytest.raises(ValueError, match="neither prepared"):
        sparsity_report(tiny_vit())
    model = prepare_model(tiny_vit(), SmartConfig())
    squash(model)
    del model.vit.layers[1]  # a slimmed model no longer has the recorded layers
    with pytest.raises(ValueError, match="does not have"):
        sparsity_report(model)
    text = format_report(sparsity_report(prepare_model(tiny_vit(), SmartConfig(pattern="nm"))), max_rows=3)
    assert "2:4" in text and "... 9 more layers" in text and text.splitlines()[-1].startswith("total (soft)")


FSDP2_SCRIPT = r"""
import json, os, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
sys.path.insert(0, "tests")
import tiny_models
import smart_hf as sh
from smart_hf.artifact.invariants import check_sparsity

torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = sh.prepare_model(tiny_models.tiny_vit(), sh.SmartConfig(pattern=sys.argv[1]))
for block in model.vit.layers:
    fully_shard(block)
fully_shard(model)
out = {"sharded": type(sh.get_smart_state(model).layers[0].weight).__name__, "soft": sh.sparsity_report(model)["total"]}
sh.harden(model)
out["hard"] = check_sparsity(model)["total"]
dist.destroy_process_group()
print("RESULT " + json.dumps(out))
"""


@pytest.mark.parametrize("pattern", ["block", "nm"])
def test_report_and_check_of_an_fsdp2_sharded_model(pattern, tmp_path):
    """Under FSDP2 the weights are DTensor shards: the report gathers them (every rank calls it, as SmartCallback's
    on_log / on_train_end do) and counts exactly what the unsharded model holds."""
    import json
    import os
    import socket
    import subprocess
    import sys

    from smart_hf.artifact.invariants import check_sparsity

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    env["LOCAL_RANK"], env["OMP_NUM_THREADS"] = "0", "1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-c", FSDP2_SCRIPT, pattern], env=env, cwd=root, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    torch.manual_seed(0)
    model = prepare_model(tiny_vit(), SmartConfig(pattern=pattern))
    assert out["sharded"] == "DTensor"
    assert out["soft"] == sparsity_report(model)["total"]
    harden(model)
    assert out["hard"] == check_sparsity(model)["total"]
