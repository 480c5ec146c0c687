"""PNG figures of a run: reconstructions, samples, curves and latent plots.

matplotlib is imported only here, and only its object-oriented API with the
Agg canvas is used, so no global backend is switched and nothing needs a
screen. Each figure is written to a new temporary file beside its path and
renamed onto it (:func:`tfvae.files.atomic_path`): never through a link at
the path, never half a figure under its name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfvae import files


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    """Writes ``fig`` to ``path`` (its format from the suffix, PNG without one), whole."""
    path = Path(path)
    with files.atomic_path(path) as tmp:
        fig.savefig(str(tmp), format=path.suffix[1:].lower() or "png")
    return path


def _hwc(image_shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    return shape if len(shape) == 3 else shape + (1,)


def tile(images: np.ndarray, image_shape, columns: int | None = None,
         gap: int = 1) -> np.ndarray:
    """Arranges ``[n, H*W*C]`` images into one grid array, ``gap`` white pixels apart.

    ``image_shape`` is ``(H, W)`` or ``(H, W, C)`` (rows channel-last); the
    channel axis is dropped for grey-level images.
    """
    images = np.asarray(images, dtype=np.float32)
    height, width, channels = _hwc(image_shape)
    n = len(images)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    step_h, step_w = height + gap, width + gap
    grid = np.ones((rows * step_h - gap, columns * step_w - gap, channels), dtype=np.float32)
    for i, image in enumerate(images.reshape(n, height, width, channels)):
        r, c = divmod(i, columns)
        grid[r * step_h:r * step_h + height, c * step_w:c * step_w + width] = image
    return grid[..., 0] if channels == 1 else grid


def save_grid(path, images, image_shape, title: str | None = None, columns: int | None = None):
    """Saves images as one grid PNG, grey-level or RGB (values clipped to [0, 1])."""
    grid = np.clip(tile(images, image_shape, columns), 0.0, 1.0)
    scale = 4.0 / max(grid.shape[:2])
    fig = _figure(max(2.0, grid.shape[1] * scale * 1.5), max(2.0, grid.shape[0] * scale * 1.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def save_reconstructions(path, originals, reconstructions, image_shape, n: int = 10):
    """Two rows: data on top, reconstructions below."""
    n = min(n, len(originals))
    images = np.concatenate([originals[:n], reconstructions[:n]])
    return save_grid(path, images, image_shape, "data (top) and reconstructions", columns=n)


def save_curves(path, history: list[dict]):
    """Training (and validation) loss and ELBO terms per epoch."""
    names = [n for n in ("loss", "reconstruction", "kl") if all(n in h for h in history)]
    fig = _figure(3 * len(names), 3)
    epochs = [h["epoch"] for h in history]
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [h.get(prefix + name) for h in history]
            if all(v is not None for v in values):
                ax.plot(epochs, values, style, label=(prefix or "train_").rstrip("_"))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def save_manifold(path, decode_mean, image_shape, quantiles, n: int = 15):
    """The 2-D latent manifold: decoded grid of codes at the prior's quantiles.

    Args:
      decode_mean: function ``[m, 2] codes -> [m, D] means`` (numpy).
      quantiles: function mapping ``m`` probabilities in (0, 1) to ``[m, 2]``
        prior coordinates (one column per latent dimension).
    """
    grid = np.asarray(quantiles(np.linspace(0.05, 0.95, n)), np.float32).reshape(n, -1)
    xs, ys = grid[:, 0], grid[:, -1]
    codes = np.array([[a, b] for b in ys[::-1] for a in xs], dtype=np.float32)
    return save_grid(path, decode_mean(codes), image_shape, "latent manifold", columns=n)


def save_latent_scatter(path, codes, labels=None, title="test codes", ellipses=None,
                        classes: int | None = None, label_name: str | None = None):
    """Scatter of 2-D codes, coloured by label or component, with optional ellipses.

    Labels are discrete (digit classes, mixture components), so each gets one
    colour and the colour bar one band with an integer tick, never a
    continuous gradient between classes.

    Args:
      codes: ``[n, 2]`` array.
      labels: ``[n]`` ints in ``[0, classes)``, or None.
      ellipses: optional list of ``(mean [2], covariance [2, 2])`` drawn at 2 sigma,
        one per component.
      classes: how many labels the colour bar shows (default: one more than
        the largest label, and at least one per ellipse, so a component no
        code fell in keeps its band).
      label_name: caption of the colour bar (e.g. ``"mixture component"``).
    """
    from matplotlib.patches import Ellipse

    fig = _figure(6, 5)
    ax = fig.add_subplot(1, 1, 1)
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=4, alpha=0.7)
    else:
        labels = np.asarray(labels).astype(int)
        if classes is None:
            classes = max(int(labels.max(initial=-1)) + 1, len(ellipses or []), 1)
        cmap, norm = discrete_colours(classes)
        scatter = ax.scatter(codes[:, 0], codes[:, 1], c=labels, s=4, cmap=cmap, norm=norm,
                             alpha=0.7)
        step = int(np.ceil(classes / 20))  # at most about 20 tick labels
        colorbar = fig.colorbar(scatter, ax=ax, ticks=np.arange(0, classes, step))
        colorbar.minorticks_off()
        if label_name:
            colorbar.set_label(label_name)
    for mean, cov in ellipses or []:
        values, vectors = np.linalg.eigh(cov)
        angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
        width, height = 4.0 * np.sqrt(np.maximum(values[::-1], 0.0))
        ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color="black", lw=1))
    ax.set_title(title)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    fig.tight_layout()
    return _save(fig, path)


def discrete_colours(classes: int):
    """``(cmap, norm)`` giving each integer label in ``[0, classes)`` a colour of its own.

    The qualitative ``tab10``/``tab20`` palettes while they have enough
    colours, evenly spaced ``turbo`` colours beyond; the norm's band edges sit
    halfway between integers, so a colour bar shows one band per label.
    """
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if classes <= 20:
        palette = colormaps["tab10" if classes <= 10 else "tab20"].colors[:classes]
    else:
        palette = colormaps["turbo"](np.linspace(0.0, 1.0, classes))
    return (ListedColormap(palette, name=f"labels{classes}"),
            BoundaryNorm(np.arange(classes + 1) - 0.5, classes))
