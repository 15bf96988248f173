"""The run's PNG plots: every layer name readable in full, loss axes that say what they plot; none, with a warning,
without matplotlib."""

import logging
import sys

import matplotlib
import pytest

from smart_hf.artifact.plots import _layer_sparsity, _short_names, _training_curves, save_plots

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class _KeepFigures:
    """Stands in for ``pyplot`` in the plot functions: builds figures with the real one, keeps them open to inspect."""

    def __init__(self):
        self.figures = []

    def subplots(self, *args, **kwargs):
        fig, axes = plt.subplots(*args, **kwargs)
        self.figures.append(fig)
        return fig, axes

    def close(self, fig):
        pass


def _report(n_blocks: int) -> dict:
    names = [f"deit.layers.{i}.{part}" for i in range(n_blocks) for part in ("attention.q_proj", "mlp.fc1", "mlp.fc2")]
    return {"layers": [{"name": n, "sparsity": 0.5} for n in names], "total": {"sparsity": 0.5}}


def test_short_names_drop_only_the_shared_prefix():
    assert _short_names(["a.b.0.q", "a.b.1.q", "a.b.1.fc"]) == ["0.q", "1.q", "1.fc"]
    assert _short_names(["classifier"]) == ["classifier"]
    assert _short_names(["a.x", "a.x"]) == ["x", "x"]  # a name is never emptied


def test_layer_plot_prints_every_name_in_full_inside_the_figure(tmp_path):
    """72 layers (a 12-block DeiT's count in the main job) were drawn as clipped 28-character labels."""
    keep = _KeepFigures()
    report = _report(24)
    _layer_sparsity(keep, report, str(tmp_path / "layers.png"))
    fig = keep.figures[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = fig.axes[0].get_yticklabels()
    assert [label.get_text() for label in labels] == _short_names([r["name"] for r in report["layers"]])
    width, height = fig.bbox.width, fig.bbox.height
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, label.get_text()
    assert (tmp_path / "layers.png").is_file()


def test_training_plot_labels_train_and_eval_loss(tmp_path):
    history = [{"step": s, "loss": 2.0 / s, "smart/temperature": 1.0 / s, "smart/fractionality": 0.1} for s in (1, 2)]
    history += [{"step": 2, "eval_loss": 1.5}, {"step": 2, "eval_test_loss": 9.0}]
    keep = _KeepFigures()
    _training_curves(keep, history, (0, 1, 1), str(tmp_path / "training.png"))
    loss_axis = keep.figures[0].axes[2]
    assert loss_axis.get_ylabel() == "loss"
    assert [line.get_label() for line in loss_axis.get_lines()] == ["train loss", "eval loss"]
    assert list(loss_axis.get_lines()[1].get_ydata()) == [1.5]  # the validation loss, never the test loss


def test_save_plots_writes_both_files(tmp_path):
    paths = save_plots(_report(1), [{"step": 1, "loss": 1.0}], str(tmp_path), stages=(0, 1, 0))
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["smart_layer_sparsity.png", "smart_training.png"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_without_matplotlib_the_plots_are_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with caplog.at_level(logging.WARNING, logger="smart_hf"):
        assert save_plots(_report(1), [{"step": 1, "loss": 1.0}], str(tmp_path), stages=(0, 1, 0)) == []
    assert "pip install matplotlib" in caplog.text
    assert list(tmp_path.iterdir()) == []
