"""Crash-safe saving: `staged_directory` semantics, and a process killed mid-save never leaves a half-written model."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from smart_hf.artifact.atomic import staged_directory


def _write(folder, **files):
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(text)


def _read_all(folder):
    return {name: open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder))}


def test_fresh_target_appears_complete_and_no_staging_left(tmp_path):
    target = tmp_path / "a" / "model"
    with staged_directory(target) as folder:
        _write(folder, **{"config.json": "{}", "model.bin": "w"})
        assert not target.exists()  # nothing visible before the block ends
    assert _read_all(target) == {"config.json": "{}", "model.bin": "w"}
    assert os.listdir(tmp_path / "a") == ["model"]


def test_exception_leaves_previous_artifact_untouched(tmp_path):
    target = tmp_path / "model"
    with staged_directory(target) as folder:
        _write(folder, **{"config.json": "old", "model.bin": "old"})
    with pytest.raises(RuntimeError, match="disk full"):
        with staged_directory(target) as folder:
            _write(folder, **{"model.bin": "new"})
            raise RuntimeError("disk full")
    assert _read_all(target) == {"config.json": "old", "model.bin": "old"}
    assert os.listdir(tmp_path) == ["model"]


def test_merge_into_a_folder_with_other_content_keeps_it(tmp_path):
    target = tmp_path / "out"
    (target / "checkpoint-10").mkdir(parents=True)
    _write(target, **{"config.json": "old", "trainer_log.txt": "keep me"})
    with staged_directory(target) as folder:
        _write(folder, **{"config.json": "new", "model.bin": "new"})
    assert _read_all(target / "checkpoint-10") == {}
    assert open(target / "config.json").read() == "new"
    assert open(target / "model.bin").read() == "new"
    assert open(target / "trainer_log.txt").read() == "keep me"


def test_replace_swaps_the_whole_folder(tmp_path):
    target = tmp_path / "hub_artifact"
    with staged_directory(target) as folder:
        _write(folder, **{"config.json": "old", "stale.bin": "old"})
    with staged_directory(target, replace=True) as folder:
        _write(folder, **{"config.json": "new"})
    assert _read_all(target) == {"config.json": "new"}
    assert os.listdir(tmp_path) == ["hub_artifact"]


def test_staging_of_a_dead_process_is_cleaned_but_a_live_one_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".model.tmp-{int(dead.stdout)}-abc"
    live = tmp_path / f".model.tmp-{os.getppid()}-xyz"
    stale.mkdir()
    live.mkdir()
    with staged_directory(tmp_path / "model") as folder:
        _write(folder, **{"config.json": "{}"})
    assert not stale.exists()
    assert live.exists()


def test_a_file_in_the_way_is_a_clear_error(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    with pytest.raises(ValueError, match="pass a folder path"):
        with staged_directory(tmp_path / "model"):
            pass
    assert (tmp_path / "model").read_text() == "not a folder"


# A child process saves a pruned tiny BERT twice (value 1, then value 2) and is killed during the second save.
_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    import smart_hf.artifact.export as export
    from smart_hf import SmartConfig, prepare_model, save_pruned

    target, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = prepare_model(BertForSequenceClassification(config), SmartConfig(pattern="block", block_shape=[4, 4],
                                                                              sparsity=0.5))
    def fill(value):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not name.startswith("smart") and ".smart_" not in name:
                    param.fill_(value)
    fill(1.0)
    save_pruned(model, target, save_plots=False)
    fill(2.0)
    if mode == "stall_after_weights":  # deterministic: killed after the weights are written, before the rest
        original = export._write_weights
        def stalled(*args, **kwargs):
            original(*args, **kwargs)
            print("WEIGHTS_WRITTEN", flush=True)
            time.sleep(120)
        export._write_weights = stalled
    elif mode == "stall_mid_weights_file":  # killed while model.safetensors is half written
        original_save = type(model).save_pretrained
        def half_written(self, folder, **kwargs):
            original_save(self, folder, **kwargs)
            path = folder + "/model.safetensors"
            size = os.path.getsize(path)
            with open(path, "r+b") as fh:
                fh.truncate(size // 2)
            print("HALF_WRITTEN", flush=True)
            time.sleep(120)
        type(model).save_pretrained = half_written
    save_pruned(model, target, save_plots=False)
    print("SECOND_SAVE_DONE", flush=True)
    time.sleep(120)
    """
)


def _run_and_kill(target, mode, marker, delay):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(target), mode], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            line = child.stdout.readline()
            if marker in line or not line:
                break
        assert child.poll() is None, "the child process exited before it could be killed"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()


def _assert_complete_artifact(target, allowed_values):
    names = set(os.listdir(target))
    assert {"config.json", "model.safetensors", "smart_config.json", "smart_sparsity.json", "README.md"} <= names
    with open(os.path.join(target, "config.json")) as fh:
        assert json.load(fh)["smart_hf"]["config"]["pattern"] == "block"
    model = AutoModelForSequenceClassification.from_pretrained(target)
    weight = model.bert.encoder.layer[0].intermediate.dense.weight
    kept = weight[weight != 0]
    values = set(torch.unique(kept).tolist())
    assert len(values) == 1 and values <= allowed_values  # one whole save, never a mix of two
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_killed_after_writing_weights_keeps_the_previous_model(tmp_path):
    target = tmp_path / "model"
    _run_and_kill(target, "stall_after_weights", "WEIGHTS_WRITTEN", delay=0.2)
    _assert_complete_artifact(target, {1.0})
    assert [e for e in os.listdir(tmp_path) if e != "model"], "the killed save's staging folder should remain"
    with staged_directory(target) as folder:  # ... and the next save to the same place removes it
        _write(folder, **{"note.txt": "x"})
    assert os.listdir(tmp_path) == ["model"]


def test_killed_mid_weights_file_keeps_the_previous_model(tmp_path):
    target = tmp_path / "model"
    _run_and_kill(target, "stall_mid_weights_file", "HALF_WRITTEN", delay=0.2)
    _assert_complete_artifact(target, {1.0})


def test_the_kill_harness_sees_a_finished_second_save(tmp_path):
    """Control for the two tests above: when the save is not interrupted, the new weights are what loads."""
    target = tmp_path / "model"
    _run_and_kill(target, "uninterrupted", "SECOND_SAVE_DONE", delay=0.0)
    _assert_complete_artifact(target, {2.0})


@pytest.mark.parametrize(("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
@pytest.mark.parametrize("existing", [False, True])
def test_every_file_gets_the_umask_modes(tmp_path, umask, file_mode, folder_mode, existing):
    """Files written through a temporary file (``mkstemp``: 0600) and folders made by ``mkdtemp`` (0700) are
    published with the modes a plain ``open`` / ``mkdir`` gives under the umask, like the rest of the artifact."""
    target = tmp_path / "model"
    if existing:
        target.mkdir()
        (target / "checkpoint-1").write_text("kept")
    previous = os.umask(umask)
    try:
        with staged_directory(target) as folder:
            handle, temporary = tempfile.mkstemp(dir=folder)
            os.close(handle)
            os.replace(temporary, os.path.join(folder, "model.safetensors"))
            _write(folder, **{"config.json": "{}"})
            inner = tempfile.mkdtemp(dir=folder)
            _write(inner, **{"a.txt": "a"})
            script = os.path.join(folder, "run.sh")
            _write(folder, **{"run.sh": "#!/bin/sh\n"})
            os.chmod(script, 0o700)
    finally:
        os.umask(previous)
    modes = {
        os.path.relpath(os.path.join(root, name), target): stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
        for root, dirs, files in os.walk(target)
        for name in dirs + files
        if name != "checkpoint-1"
    }
    inner_name = os.path.basename(inner)
    assert modes == {
        "model.safetensors": file_mode,
        "config.json": file_mode,
        inner_name: folder_mode,
        os.path.join(inner_name, "a.txt"): file_mode,
        "run.sh": folder_mode,  # an executable keeps its execute bits
    }
    if not existing:  # the staging folder became the target
        assert stat.S_IMODE(os.stat(target).st_mode) == folder_mode
