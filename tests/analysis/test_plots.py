"""What the plots say: class names, legends that explain every line and cover no bar."""

from dbm_ltr import figures
from dbm_ltr.analysis import plots


def _capture(monkeypatch, module):
    seen = []

    def keep(fig, path):
        seen.append(fig)
        return path

    monkeypatch.setattr(module, "save_figure", keep)
    return seen


def test_per_class_plot_names_classes_and_keeps_the_legend_above_the_bars(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, figures)
    names = ["airplane", "automobile", "bird", "cat"]
    figures.plot_per_class_accuracy([90.0, 80.0, None, 10.0], [500, 120, 40, 8], tmp_path / "p.png", class_names=names)
    ax = seen[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["many", "medium", "few", "training images"]
    assert legend.get_bbox_to_anchor().y0 >= ax.get_window_extent().y1 - 1  # above the axes


def test_accuracy_vs_count_explains_the_group_boundaries(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, plots)
    plots.plot_accuracy_vs_count([("run", [90.0, 50.0, 10.0], [500, 60, 5])], tmp_path / "a.png")
    labels = [t.get_text() for t in seen[0].axes[0].get_legend().get_texts()]
    assert labels == ["run", "Few | Medium (20 images)", "Medium | Many (over 100 images)"]


def test_drawing_a_plot_leaves_matplotlib_and_pyplot_as_they_were(tmp_path):
    """The trainer and analyze draw on figures of their own: a notebook's backend and its pyplot
    figures stay as they are."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        import matplotlib.pyplot as plt

        open_figures = plt.get_fignums()
        figures.plot_per_class_accuracy([90.0, 10.0], [500, 8], tmp_path / "p.png")
        plots.plot_accuracy_vs_count([("run", [90.0, 10.0], [500, 8])], tmp_path / "a.png")
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_figures
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "a.png").stat().st_size > 1000
    finally:
        matplotlib.use(before)
