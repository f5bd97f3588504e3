"""Plots for the diagnostics and the command-line tool (matplotlib, Agg backend).

Every function returns the `matplotlib.figure.Figure` and, given `path`, saves it there
as a PNG. Figures are created with `matplotlib.figure.Figure` directly (not `pyplot`), so
nothing depends on — or changes — the global pyplot state or the interactive backend.
"""

import numpy as np

from keras_classpca._optional import import_optional

__all__ = ["plot_timescales", "plot_filter_grid", "plot_cutoff_sweep", "match_filters"]


def _figure(width, height, layout="constrained"):
    figure_module = import_optional("matplotlib.figure", "Plotting")
    return figure_module.Figure(figsize=(width, height), layout=layout)


def _save(figure, path, dpi):
    if path is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(figure)
        figure.savefig(path, dpi=dpi)
    return figure


def _nan(values):
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_timescales(history, path=None, *, dpi=90, title=None):
    """Per-layer class-PCA overlap and weight change against the epoch.

    Args:
        history: `TimescaleMonitor.history` (or the dict loaded from its JSON).
        path: save the PNG there.
        dpi: resolution of the saved PNG.
        title: figure title.

    Returns:
        The figure: left, overlap with the class-PCA subspace of each layer's current
        input (dotted: the chance level of that layer); middle, relative weight change
        per epoch (log scale) with the settling threshold and each layer's settling
        epoch; right (when the history has it), the filter-subspace change per epoch,
        which does not depend on the optimizer's per-weight step, with its threshold and
        settling epochs.
    """
    if not history.get("epochs") or not history.get("layers"):
        raise ValueError(
            "`history` has no checks to plot (no epochs or no layers): run the "
            "TimescaleMonitor in `fit` first."
        )
    subspace = all("subspace_change" in e for e in history["layers"].values()) and bool(
        history["layers"])
    figure = _figure(15 if subspace else 10, 3.8)
    panels = figure.subplots(1, 3 if subspace else 2)
    left, right = panels[0], panels[1]
    epochs = np.asarray(history["epochs"])
    threshold = history.get("settings", {}).get("settle_threshold")
    colors = [f"C{i}" for i in range(10)]
    for i, (name, entry) in enumerate(history["layers"].items()):
        color = colors[i % len(colors)]
        label = f"{i + 1}. {name}"
        left.plot(epochs, _nan(entry["overlap"]), "o-", color=color, label=label, ms=3)
        left.axhline(entry["chance_overlap"], color=color, ls=":", lw=1)
        if "noise_ceiling" in entry:
            left.plot(epochs, _nan(entry["noise_ceiling"]), "--", color=color, lw=1)
        change = _nan(entry["weight_change"])
        right.plot(epochs, change, "o-", color=color, label=label, ms=3)
        settled = history.get("settled_epoch", {}).get(name)
        if settled is not None:
            right.axvline(settled, color=color, ls="--", lw=1)
        if subspace:
            panels[2].plot(epochs, _nan(entry["subspace_change"]), "o-", color=color,
                           label=label, ms=3)
            settled = history.get("subspace_settled_epoch", {}).get(name)
            if settled is not None:
                panels[2].axvline(settled, color=color, ls="--", lw=1)
    left.set_xlabel("epoch")
    left.set_ylabel("overlap with class-PCA subspace")
    left.set_ylim(0, 1.02)
    ceiling = any("noise_ceiling" in entry for entry in history["layers"].values())
    left.set_title(
        "filters vs class-PCA of the layer's current input\n(dotted: chance"
        + ("; dashed: half-sample agreement)" if ceiling else ")"),
        fontsize=9,
    )
    left.legend(fontsize=8)
    right.set_xlabel("epoch")
    right.set_ylabel("‖ΔW‖/‖W‖ per epoch")
    if np.any(
        np.isfinite(np.concatenate([_nan(e["weight_change"]) for e in history["layers"].values()]))
    ):
        right.set_yscale("log")
    if threshold:
        right.axhline(threshold, color="k", ls=":", lw=1, label=f"settle threshold {threshold:g}")
    right.set_title("relative weight change per epoch\n(dashed: settled)", fontsize=9)
    right.legend(fontsize=8)
    if subspace:
        moved = np.concatenate([_nan(e["subspace_change"]) for e in history["layers"].values()])
        if np.any(np.isfinite(moved) & (moved > 0)):
            panels[2].set_yscale("log")
        limit = history.get("settings", {}).get("subspace_threshold")
        if limit:
            panels[2].axhline(limit, color="k", ls=":", lw=1, label=f"threshold {limit:g}")
        panels[2].set_xlabel("epoch")
        panels[2].set_ylabel("1 − overlap with previous filter subspace")
        panels[2].set_title("filter-subspace change per epoch\n(dashed: settled)", fontsize=9)
        panels[2].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path, dpi)


def match_filters(reference, filters):
    """Order `filters` `(d, n)` so that column j best matches `reference[:, j]`.

    Greedy on |cosine| (largest first); signs are flipped to make matched cosines
    positive. Returns `(ordered_filters, cosines)`; unmatched columns (when `filters`
    has more) are appended in their original order with cosine NaN; a reference column
    left without a filter (when `filters` has fewer) gets a column of NaN, so that
    column j still stands for `reference[:, j]`.
    """
    reference = np.asarray(reference, dtype=float)
    filters = np.asarray(filters, dtype=float)
    r = reference / np.maximum(np.linalg.norm(reference, axis=0), 1e-12)
    f = filters / np.maximum(np.linalg.norm(filters, axis=0), 1e-12)
    cos = r.T @ f
    order = np.full(reference.shape[1], -1)
    used = set()
    for flat in np.argsort(-np.abs(cos), axis=None):
        i, j = np.unravel_index(flat, cos.shape)
        if order[i] >= 0 or j in used:
            continue
        order[i] = j
        used.add(j)
        if len(used) == min(cos.shape):
            break
    columns, cosines = [], []
    for i, j in enumerate(order):
        if j >= 0:
            sign = 1.0 if cos[i, j] >= 0 else -1.0
            columns.append(sign * filters[:, j])
            cosines.append(abs(cos[i, j]))
        else:
            columns.append(np.full(filters.shape[0], np.nan))
            cosines.append(np.nan)
    for j in range(filters.shape[1]):
        if j not in used:
            columns.append(filters[:, j])
            cosines.append(np.nan)
    return np.stack(columns, axis=1), np.array(cosines)


def _tiles(kernel):
    """(kh, kw, C, n) kernel -> list of n images to show, and a note on channels."""
    kernel = np.asarray(kernel, dtype=float)
    if kernel.ndim != 4:
        raise ValueError(
            f"`kernel` must be a Conv2D kernel (kh, kw, C, n); received shape {kernel.shape}."
        )
    channels = kernel.shape[2]
    if channels in (1, 3):
        tiles = [kernel[:, :, :, j] for j in range(kernel.shape[3])]
        note = "" if channels == 1 else " (RGB)"
    else:
        energy = np.sum(kernel**2, axis=(0, 1))  # (C, n)
        strongest = np.argmax(energy, axis=0)
        tiles = [kernel[:, :, strongest[j], j][:, :, None] for j in range(kernel.shape[3])]
        note = " (strongest input channel)"
    return tiles, note


def _grid(figure, spec, tiles, title, columns):
    rows = int(np.ceil(len(tiles) / columns))
    axes = spec.subgridspec(rows, columns, wspace=0.05, hspace=0.05)
    for k in range(rows * columns):
        ax = figure.add_subplot(axes[k // columns, k % columns])
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(tiles):
            ax.axis("off")
            continue
        tile = tiles[k]
        if tile.shape[-1] == 3:
            span = np.max(np.abs(tile)) or 1.0
            ax.imshow(0.5 + 0.5 * tile / span, interpolation="nearest")
        else:
            span = np.max(np.abs(tile)) or 1.0
            ax.imshow(tile[:, :, 0], cmap="RdBu_r", vmin=-span, vmax=span, interpolation="nearest")
        if k == 0:
            ax.set_title(title, fontsize=9, loc="left")


def plot_filter_grid(
    class_pca_kernel,
    sgd_kernel,
    path=None,
    *,
    columns=8,
    dpi=80,
    titles=("class-PCA filters", "SGD-trained filters"),
    match=True,
    suptitle=None,
):
    """Class-PCA filters of a conv layer as an image grid next to SGD-trained filters.

    Args:
        class_pca_kernel: `(kh, kw, C, n)` kernel (e.g. `ClassPCA(n).components_`
            reshaped to the layer's kernel shape).
        sgd_kernel: the trained layer's kernel, same shape.
        path: save the PNG there.
        columns: tiles per row.
        match: reorder (and sign-flip) the SGD filters to face their best-matching
            class-PCA filter (`match_filters`); the |cosine| of each pair is shown.
        titles, suptitle: panel and figure titles.

    Returns:
        The figure. Each filter is shown with its own symmetric colour scale (red
        positive, blue negative); with more than 3 input channels the strongest
        channel of each filter is shown.
    """
    a = np.asarray(class_pca_kernel, dtype=float)
    b = np.asarray(sgd_kernel, dtype=float)
    if a.ndim != 4 or b.ndim != 4 or a.shape[:3] != b.shape[:3]:
        raise ValueError(
            "Kernels must be (kh, kw, C, n) with the same (kh, kw, C); "
            f"received {a.shape} and {b.shape}."
        )
    cosines = None
    if match:
        flat, cosines = match_filters(a.reshape(-1, a.shape[3]), b.reshape(-1, b.shape[3]))
        b = flat.reshape(b.shape[:3] + (flat.shape[1],))
    tiles_a, note = _tiles(a)
    tiles_b, _ = _tiles(b)
    n = max(len(tiles_a), len(tiles_b))
    rows = int(np.ceil(n / columns))
    height = 0.6 * rows + 0.9
    figure = _figure(2 * 0.55 * columns + 0.6, height, layout=None)
    spec = figure.add_gridspec(
        1,
        2,
        wspace=0.08,
        left=0.02,
        right=0.98,
        bottom=0.03,
        top=1.0 - (0.4 + 0.2 * (suptitle.count("\n") + 1) if suptitle else 0.4) / height,
    )
    _grid(figure, spec[0, 0], tiles_a, titles[0] + note, columns)
    second = titles[1] + note
    if cosines is not None and np.any(np.isfinite(cosines)):
        second += f", matched: mean |cos| {np.nanmean(cosines):.2f}"
    _grid(figure, spec[0, 1], tiles_b, second, columns)
    if suptitle:
        figure.suptitle(suptitle, fontsize=10)
    return _save(figure, path, dpi)


def plot_cutoff_sweep(rows, path=None, *, dpi=90, title=None):
    """Test accuracy (and total time) against the number of solved layers.

    Args:
        rows: dicts with `cutoff`, `test_accuracy` and optionally `total_seconds`
            (e.g. the rows of `keras-classpca sweep`).
        path: save the PNG there.

    Returns:
        The figure: accuracy on the left axis, seconds (bars) on the right.
    """
    rows = sorted(rows, key=lambda r: r["cutoff"])
    if not rows:
        raise ValueError("`rows` is empty: nothing to plot.")
    cutoffs = np.array([r["cutoff"] for r in rows])
    accuracy = np.array([r["test_accuracy"] for r in rows], dtype=float)
    figure = _figure(5.5, 3.6)
    ax = figure.subplots()
    if all("total_seconds" in r for r in rows):
        twin = ax.twinx()
        twin.bar(
            cutoffs, [r["total_seconds"] for r in rows], width=0.4, color="0.85", label="total time"
        )
        twin.set_ylabel("seconds (bars)")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.plot(cutoffs, accuracy, "o-", color="C0")
    for c, a in zip(cutoffs, accuracy):
        ax.annotate(
            f"{a:.3f}", (c, a), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8
        )
    ax.set_xticks(cutoffs)
    ax.set_xlabel("cutoff (bottom layers solved by class-PCA; 0 = plain SGD)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "hybrid accuracy vs cutoff", fontsize=10)
    return _save(figure, path, dpi)
