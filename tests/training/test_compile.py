"""``SmartTrainingArguments(torch_compile=True)``: all three stages run compiled, with the eager run's losses and
masks, and the number of compiled graphs does not grow with the run (no recompile per temperature or budget value).

The mask math (the temperature, the annealed budget, the shift solve with its host-side convergence checks) runs
outside the compiled graphs; what is compiled is the model around it. Dynamo's ``eager`` backend is used: it
captures and guards exactly as inductor does (the recompiles are Dynamo's), without the code generation time.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_vit

import smart_hf as sh

torch_dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402


def _images(count: int = 32):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(count, 3, 16, 16, generator=g), torch.randint(0, 3, (count,), generator=g)
    return Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.numpy()}).with_format("torch")


def _run(tmp_path, compile_: bool, steps: int) -> tuple[list[float], list[torch.Tensor], int]:
    """Losses of every step, the final masks and the number of distinct graphs Dynamo compiled."""
    torch.manual_seed(0)
    torch_dynamo.reset()
    counters.clear()
    args = sh.SmartTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        pretrain_steps=2,
        search_steps=steps // 2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        save_plots=False,
        seed=0,
        collapse_action="off",
        use_cpu=True,
        torch_compile=compile_,
        torch_compile_backend="eager" if compile_ else None,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = sh.SmartTrainer(
        model=tiny_vit(), args=args, smart_config=sh.SmartConfig(pattern="nm"), train_dataset=_images()
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    masks = [layer.smart_mask.clone() for layer in sh.get_smart_state(trainer.model).layers]
    return losses, masks, counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    return {
        "eager": _run(out / "eager", False, 12),
        "compiled": _run(out / "compiled", True, 12),
        "compiled_long": _run(out / "long", True, 16),
    }


def test_compiled_run_equals_eager(runs):
    eager_losses, eager_masks, _ = runs["eager"]
    losses, masks, graphs = runs["compiled"]
    assert graphs > 0, "nothing was compiled"
    assert len(losses) == len(eager_losses) == 12  # dense, search and fine-tune steps
    assert losses == pytest.approx(eager_losses, rel=1e-5, abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(masks, eager_masks))


def test_compiled_graphs_do_not_grow_with_the_run(runs):
    """A longer run sees more temperatures and annealed budgets, the same graphs: each new value would otherwise
    be one more recompile (until Dynamo's recompile limit drops the frame back to eager)."""
    assert runs["compiled_long"][2] == runs["compiled"][2]
