"""Figures people look at: grids of 2-D sample histograms (paper Fig. 2) and metric-vs-NFE plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor


def pyplot():
    """matplotlib's pyplot with the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG at 110 dpi; folders created) and close it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def histogram_image(points: Tensor, extent: float, bins: int | None = None) -> np.ndarray:
    """A density image in [0, 1] of 2-D points, y upwards; 1 is three times the mean cell count.

    Non-finite points are dropped (they still count in N).

    Args:
        points: point cloud (N, 2).
        extent: the image covers [-extent, extent]^2.
        bins: cells per side; defaults to sqrt(N / 4), clipped to [32, 200], so that sparse samples still
            look like a density.

    Returns:
        The image, a float64 array (bins, bins), row 0 at the top (largest y).
    """
    x = points.reshape(-1, 2).double().cpu().numpy()
    x = x[np.isfinite(x).all(axis=1)]
    if bins is None:
        bins = int(np.clip(np.sqrt(len(points) / 4), 32, 200))
    hist, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=[[-extent, extent], [-extent, extent]])
    scale = 3 * max(len(points), 1) / (bins * bins)
    return (hist.T[::-1] / scale).clip(0, 1)


def save_histogram_grid(
    cells: Sequence[Sequence[Tensor | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | Path,
    extent: float = 4.0,
    title: str | None = None,
    bins: int | None = None,
) -> Path:
    """Save a grid of histograms (:func:`histogram_image`) as an image file.

    Args:
        cells: ``cells[row][col]`` is a point cloud (N, 2) or None (left blank).
        row_labels: one label per row.
        col_labels: one label per column (titles of the first row).
        path: the output file; missing parent folders are created.
        extent: every histogram covers [-extent, extent]^2.
        title: optional figure title.
        bins: cells per side of every histogram (None: the default of :func:`histogram_image`).

    Returns:
        ``path`` as a Path.
    """
    plt = pyplot()
    rows, cols = len(row_labels), len(col_labels)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols + 0.8, 2.0 * rows + (0.5 if title else 0.2)),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if cells[r][c] is not None:
                ax.imshow(histogram_image(cells[r][c], extent, bins), cmap="viridis", vmin=0, vmax=1,
                          interpolation="nearest")
            else:
                ax.set_facecolor("white")
            if r == 0:
                ax.set_title(col_labels[c], fontsize=10)
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def save_metric_plot(
    series: Mapping[str, Mapping[int, float]],
    path: str | Path,
    ylabel: str,
    floor: float | None = None,
    title: str | None = None,
    log_y: bool = False,
) -> Path:
    """Save a metric-vs-NFE line plot (log2 x axis) as an image file.

    Args:
        series: ``series[name][nfe] = value``, one line per name (solid for names starting with "gm",
            dashed otherwise).
        path: the output file; missing parent folders are created.
        ylabel: the y-axis label.
        floor: if given, drawn as a horizontal line, the data noise floor.
        title: optional plot title.
        log_y: whether the y axis is logarithmic.

    Returns:
        ``path`` as a Path.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in series.items():
        nfes = sorted(values)
        style = "-o" if name.startswith("gm") else "--s"
        ax.plot(nfes, [values[n] for n in nfes], style, label=name, markersize=4)
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle=":", label="data noise floor")
    ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def save_image_grid(images: Tensor, path: str | Path, nrow: int = 10, row_labels: Sequence[str] | None = None,
                    title: str | None = None) -> Path:
    """Save images as a grid with ``nrow`` images per row.

    Args:
        images: (N, 1 or 3, H, W) in [-1, 1] (clamped).
        path: the output file; missing parent folders are created.
        nrow: images per row.
        row_labels: optional labels of the grid rows.
        title: optional figure title.

    Returns:
        ``path`` as a Path.
    """
    plt = pyplot()
    x = ((images.float().clamp(-1, 1) + 1) / 2).cpu().numpy()
    n = len(x)
    rows = (n + nrow - 1) // nrow
    h, w = x.shape[-2:]
    canvas = np.ones((rows * (h + 2), nrow * (w + 2), 3), dtype=np.float32)
    for i, img in enumerate(x):
        r, c = divmod(i, nrow)
        img = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img
        canvas[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = img.transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(nrow * 0.45 + 0.6, rows * 0.45 + (0.5 if title else 0.2)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(r + 0.5) * (h + 2) for r in range(rows)] if row_labels else [])
    if row_labels:
        ax.set_yticklabels(row_labels, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
