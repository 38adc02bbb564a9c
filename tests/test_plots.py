import pytest

from nlp_cli import analysis

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def _image(path):
    from matplotlib.image import imread

    return imread(path)


def test_history_plot_writes_a_png(tmp_path):
    history = [
        {"epoch": e, "loss_clean": 2.0 / e, "loss_noisy": 3.0 - 0.1 * e, "test_acc": 0.1 * e}
        for e in range(1, 6)
    ]
    history[2]["loss_noisy"] = None  # an epoch without mislabelled samples in the batch
    out = analysis.plot_history(history, tmp_path / "curves.png", title="ce, sym 80%")
    assert out.read_bytes()[:8] == PNG
    img = _image(out)
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert not list(tmp_path.glob(".*tmp*"))


def test_accuracy_vs_noise_plot_has_a_panel_per_noise_type(tmp_path):
    rows = {
        "sym": {"ce": [(0.4, 0.8), (0.8, 0.3)], "dsoftmax": [(0.4, 0.85), (0.8, 0.7)]},
        "pair": {"ce": [(0.2, 0.8), (0.4, 0.6)]},
    }
    one = analysis.plot_accuracy_vs_noise({"sym": rows["sym"]}, tmp_path / "one.png")
    two = analysis.plot_accuracy_vs_noise(rows, tmp_path / "two.png")
    assert one.read_bytes()[:8] == PNG and two.read_bytes()[:8] == PNG
    assert _image(two).shape[1] > 1.5 * _image(one).shape[1]


def test_missing_matplotlib_is_one_clear_error(monkeypatch, tmp_path):
    import sys

    from nlp_cli.errors import NlpError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(NlpError, match="matplotlib"):
        analysis.plot_history([{"epoch": 1, "test_acc": 0.5}], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
