"""Plots: written, non-empty, and showing what they claim."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_classpca.diagnostics.plots import (
    match_filters,
    plot_cutoff_sweep,
    plot_filter_grid,
    plot_timescales,
)  # noqa: E402


def _history():
    return {
        "epochs": [0, 1, 2, 3],
        "layers": {
            "conv1": {
                "overlap": [0.5, 0.6, 0.7, 0.72],
                "weight_change": [None, 0.3, 0.05, 0.02],
                "chance_overlap": 0.48,
            },
            "conv2": {
                "overlap": [0.1, 0.2, None, 0.4],
                "weight_change": [None, 0.5, 0.2, 0.1],
                "chance_overlap": 0.08,
            },
        },
        "settled_epoch": {"conv1": 2, "conv2": None},
        "settings": {"settle_threshold": 0.06},
    }


def _check_png(path, min_bytes=5_000):
    assert path.exists() and path.stat().st_size > min_bytes
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    return pixels


def test_plot_timescales(tmp_path):
    figure = plot_timescales(_history(), tmp_path / "t.png", title="test")
    _check_png(tmp_path / "t.png")
    left, right = figure.axes[:2]
    assert [
        line.get_label() for line in left.get_lines() if not line.get_label().startswith("_")
    ] == ["1. conv1", "2. conv2"]
    assert right.get_yscale() == "log"
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), [0.5, 0.6, 0.7, 0.72])
    assert np.isnan(left.get_lines()[2].get_ydata()[2])  # None -> gap, not zero


def test_plot_filter_grid(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5, 1, 12))
    b = -a[..., ::-1] + 0.01 * rng.normal(size=a.shape)
    figure = plot_filter_grid(a, b, tmp_path / "f.png")
    _check_png(tmp_path / "f.png")
    assert len(figure.axes) >= 24
    titles = [ax.get_title(loc="left") for ax in figure.axes if ax.get_title(loc="left")]
    assert titles[0] == "class-PCA filters"
    assert titles[1].endswith("mean |cos| 1.00")  # the reversed, sign-flipped copy is matched
    many_channels = rng.normal(size=(3, 3, 8, 6))
    plot_filter_grid(many_channels, many_channels, tmp_path / "g.png", columns=3)
    _check_png(tmp_path / "g.png", min_bytes=2_000)
    with pytest.raises(ValueError, match="kh, kw, C"):
        plot_filter_grid(a, rng.normal(size=(3, 3, 1, 12)))


def test_match_filters_recovers_permutation_and_sign():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(20, 6))
    permutation = np.array([3, 0, 5, 1, 4, 2])
    signs = np.array([1, -1, 1, -1, -1, 1])
    filters = reference[:, permutation] * signs * 3.0
    ordered, cosines = match_filters(reference, filters)
    np.testing.assert_allclose(ordered, reference * 3.0, atol=1e-12)
    np.testing.assert_allclose(cosines, 1.0)


def test_plot_cutoff_sweep(tmp_path):
    rows = [
        {"cutoff": 2, "test_accuracy": 0.84, "total_seconds": 20.0},
        {"cutoff": 0, "test_accuracy": 0.89, "total_seconds": 30.0},
        {"cutoff": 1, "test_accuracy": 0.88, "total_seconds": 22.0},
    ]
    figure = plot_cutoff_sweep(rows, tmp_path / "s.png")
    _check_png(tmp_path / "s.png")
    line = figure.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(line.get_ydata(), [0.89, 0.88, 0.84])
    with pytest.raises(ValueError, match="empty"):
        plot_cutoff_sweep([])


def test_no_path_means_no_file(tmp_path):
    plot_timescales(_history())
    assert not list(tmp_path.iterdir())


def test_match_filters_keeps_columns_aligned_when_filters_are_fewer():
    reference = np.eye(4)
    ordered, cosines = match_filters(reference, reference[:, [3, 1]])
    np.testing.assert_array_equal(ordered[:, 1], reference[:, 1])
    np.testing.assert_array_equal(ordered[:, 3], reference[:, 3])
    assert np.isnan(ordered[:, 0]).all() and np.isnan(cosines[[0, 2]]).all()


def test_an_empty_history_is_refused_by_name():
    with pytest.raises(ValueError, match="`history` has no checks to plot"):
        plot_timescales({"epochs": [], "layers": {}})
