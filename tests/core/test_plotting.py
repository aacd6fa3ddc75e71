"""Plots are standalone Figures saved atomically: pyplot is never imported, the backend never changed."""

from __future__ import annotations

import sys

from lmforge.core.plotting import new_figure, save_figure


def test_save_figure_writes_a_png_and_leaves_no_temporary_file(tmp_path):
    figure, axes = new_figure(3, 2, dpi=50)
    axes.plot([0, 1, 2], [1, 0, 1])
    path = save_figure(figure, tmp_path / "sub" / "curve.png")
    assert path == tmp_path / "sub" / "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]


def test_library_plots_leave_pyplot_and_the_backend_alone(tmp_path, monkeypatch):
    """Both plotters (training curves, accuracy against shots) work with pyplot made unimportable
    and `matplotlib.use` made an error: neither touches the caller's global plotting state."""
    import matplotlib

    from lmforge.eval.plot import plot_accuracy_vs_shots
    from lmforge.train.metrics import plot_metrics

    def no_use(*args, **kwargs):
        raise AssertionError("matplotlib.use was called")

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)  # `import matplotlib.pyplot` now raises
    monkeypatch.setattr(matplotlib, "use", no_use)
    plot_metrics([{"tokens": 10, "train_loss": 3.0}, {"tokens": 20, "train_loss": 2.0, "val_loss": 2.5}],
                 tmp_path / "loss.png")
    runs = [{"shots": k, "metrics": {"acc": 0.5 + k / 40, "acc_stderr": 0.02, "acc_norm": 0.5}} for k in (0, 4, 16)]
    plot_accuracy_vs_shots({"task": "t", "kind": "multiple_choice", "primary_metric": "acc", "chance": 0.25,
                            "runs": runs}, tmp_path / "shots.png")
    for name in ("loss.png", "shots.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
