"""Plots for the notebooks: PF-ODE trajectories, sample scatter plots, image grids, widget explorers."""
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection


HOUSE_STYLE = {
    "figure.dpi": 80, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False,
    "image.cmap": "viridis", "figure.constrained_layout.use": False,
}


def use_house_style():
    """One look for every notebook's figures: call once in the first code cell (after ``%matplotlib inline``)."""
    plt.rcParams.update(HOUSE_STYLE)


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def plot_trajectories(traj, ts, ax=None, max_paths: int = 200, cmap: str = "viridis", title=None, lim=None):
    """Draw 2-D ODE paths ``traj`` (steps, n, 2), each segment coloured by its time t (log scale).

    ``ts`` are the times of the steps; the end points (at ts[-1]) are marked in black.
    """
    traj, ts = _np(traj), _np(ts)
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] != len(ts):
        raise ValueError(f"traj must have shape (len(ts), n, 2); got {traj.shape} with {len(ts)} times")
    ax = ax or plt.gca()
    paths = traj[:, :max_paths]
    segs = np.stack([paths[:-1], paths[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)
    colour = np.tile(np.log10(ts[:-1]), paths.shape[1])
    lc = LineCollection(segs, cmap=cmap, linewidths=0.7, alpha=0.8)
    lc.set_array(colour)
    ax.add_collection(lc)
    ax.scatter(*paths[-1].T, s=4, c="k", zorder=3, label=f"t = {ts[-1]:.3g}")
    if lim is None:
        lim = np.abs(paths[-1]).max() * 1.6
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="$x_1$", ylabel="$x_2$")
    plt.colorbar(lc, ax=ax, label=r"$\log_{10} t$")
    if title:
        ax.set_title(title)
    return ax


def scatter_samples(samples: dict, reference=None, lim: float = 1.3, size: float = 3.0, ncols=None):
    """Side-by-side scatter plots, one per entry of ``samples`` ({title: (n, 2) points}).

    ``reference`` (data points) is drawn in light grey behind each panel.
    """
    n = len(samples)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (title, pts) in zip(axes.flat, samples.items()):
        if reference is not None:
            ax.scatter(*_np(reference)[:2000].T, s=size, c="0.8", label="data")
        ax.scatter(*_np(pts)[:2000].T, s=size, c="C0", alpha=0.7)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title, xlabel="$x_1$", ylabel="$x_2$")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def image_grid(images, nrow: int = 8, ax=None, title=None):
    """Show a batch of images in [-1, 1], shape (n, c, h, w), as one grid."""
    x = _np(images)
    if x.ndim != 4:
        raise ValueError(f"images must have shape (n, c, h, w); got {x.shape}")
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nr = int(np.ceil(n / ncol))
    grid = np.ones((c, nr * (h + 2), ncol * (w + 2)))
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, r * (h + 2) + 1 : r * (h + 2) + 1 + h, col * (w + 2) + 1 : col * (w + 2) + 1 + w] = x[i]
    grid = np.clip((grid + 1) / 2, 0, 1).transpose(1, 2, 0)
    ax = ax or plt.gca()
    ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax


def slider_explorer(draw, values, description: str = "value"):
    """An ipywidgets slider over ``values`` that calls ``draw(value)`` to redraw a figure.

    ``draw`` must create its own figure. Returns the widget (display it in a notebook).
    """
    import ipywidgets as widgets

    values = list(values)
    slider = widgets.SelectionSlider(options=[(f"{v:.4g}" if isinstance(v, float) else str(v), v) for v in values],
                                     value=values[0], description=description, continuous_update=False)
    return widgets.interactive(draw, value=slider)


def plot_consistency_map(x_t, f_x, t: float, reference=None, axes=None, lim: float = 1.3, size: float = 3.0):
    """Two panels: points x_t at time t (left) and where a consistency function sends them, f(x_t, t) (right).

    Each point has the same colour in both panels: the angle of its image f(x_t, t) (a cyclic
    colour map), so the left panel shows which region of x_t ends up where. The left panel's
    limits grow with the spread of x_t; ``reference`` (data) is drawn in light grey on the right.
    """
    x_t, f_x = _np(x_t), _np(f_x)
    if x_t.shape != f_x.shape or x_t.ndim != 2 or x_t.shape[1] != 2:
        raise ValueError(f"x_t and f_x must both have shape (n, 2); got {x_t.shape} and {f_x.shape}")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(7.0, 3.4))
    colour = (np.arctan2(f_x[:, 1], f_x[:, 0]) / (2 * np.pi)) % 1.0
    left, right = axes
    lim_t = max(lim, 3.0 * float(np.sqrt((x_t**2).mean())))
    left.scatter(*x_t.T, s=size, c=colour, cmap="hsv", vmin=0, vmax=1, alpha=0.7)
    left.set(xlim=(-lim_t, lim_t), ylim=(-lim_t, lim_t), aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
             title=f"$x_t$, t = {t:.3g}")
    if reference is not None:
        right.scatter(*_np(reference)[:2000].T, s=size, c="0.8")
    right.scatter(*f_x.T, s=size, c=colour, cmap="hsv", vmin=0, vmax=1, alpha=0.7)
    right.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xlabel="$x_1$", ylabel="$x_2$",
              title=f"$f(x_t, t)$, t = {t:.3g}")
    return axes


def image_rows(rows: dict, scale: float = 0.75, fontsize: int = 9):
    """Before/after comparisons: one row of images per entry of ``rows`` ({label: images (n, c, h, w) in [-1, 1]}),
    stacked top to bottom with the label above its row. Rows may have different lengths. Returns the figure.
    """
    if not rows:
        raise ValueError("rows is empty: give at least one {label: images} entry")
    longest = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(3.0, scale * longest), (scale + 0.3) * len(rows)),
                             squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        image_grid(images, nrow=len(images), ax=ax)
        ax.images[-1].set_interpolation("nearest")  # crisp pixels (and small PNG files)
        ax.set_title(label, fontsize=fontsize, loc="left")
    fig.tight_layout(h_pad=0.3)
    return fig


def sliders_explorer(draw, initial: dict = None, **options):
    """One ipywidgets slider per keyword (``name=[values]``) that calls ``draw(**values)`` on every change.

    Like ``slider_explorer`` for several parameters at once (e.g. a mask's position and size).
    ``draw`` must create its own figure; ``initial`` ({name: value}) sets start values (default:
    each list's first value). Returns the widget (display it in a notebook).
    """
    import ipywidgets as widgets

    initial = initial or {}
    unknown = set(initial) - set(options)
    if unknown:
        raise ValueError(f"initial names {sorted(unknown)} are not sliders; sliders: {sorted(options)}")
    sliders = {}
    for name, values in options.items():
        values = list(values)
        if not values:
            raise ValueError(f"slider {name!r} has no values")
        sliders[name] = widgets.SelectionSlider(
            options=[(f"{v:.4g}" if isinstance(v, float) else str(v), v) for v in values],
            value=initial.get(name, values[0]), description=name, continuous_update=False)
    return widgets.interactive(draw, **sliders)
