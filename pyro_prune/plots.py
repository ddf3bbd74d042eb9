r"""Plots of a pruned model's posterior, built on ArviZ groups and matplotlib.

Every function returns a :class:`matplotlib.figure.Figure` made without ``pyplot`` (so
nothing depends on a display or a global backend); :func:`save_figure` writes it as PNG.

* :func:`plot_theta_forest` — a forest of the noise posterior per layer: for every
  structure the posterior mean ``E[theta]`` and its highest-density interval from the
  ``posterior`` group, sorted, removed structures in grey (at ``theta = 0``, drawn on the
  left edge of the log axis).
* :func:`plot_delta_f` — histograms of the change in log evidence ``dF`` per structure
  (``reduction`` group) with the line ``dF = 0``: BMRS removes everything at or right of it
  (Wright, Igel & Selvan, NeurIPS 2024).
* :func:`plot_accuracy_vs_compression` — accuracy against compression when structures are
  removed in the order of a criterion, with the threshold-free stopping point (the last
  structure with ``dF >= 0``) and the results of continuous pruning as markers.
* :func:`plot_history` — loss, accuracy and kept structures per epoch of a fit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pyro_prune.arviz import get_group, group_names, hdi

__all__ = [
    "plot_accuracy_vs_compression",
    "plot_delta_f",
    "plot_history",
    "plot_theta_forest",
    "save_figure",
]

KEPT_COLOR = "#1f77b4"
REMOVED_COLOR = "#9a9a9a"
STOP_COLOR = "#d62728"


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (PNG unless the suffix says otherwise), atomically: a reader
    never sees a half-written image; returns the path."""
    from pyro_prune._io import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    return path


def _grid(n: int, *, max_cols: int = 4, width: float = 3.6, height: float = 3.2,
          sharey: bool = False) -> tuple[Figure, list[Any]]:
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _theta_vars(idata: Any) -> list[str]:
    post = get_group(idata, "posterior")
    names = [v for v in post.data_vars if str(v).endswith("_theta")]
    if not names:
        raise ValueError("the posterior has no noise variables (<layer>_theta)")
    return [str(v) for v in names]


def _kept(idata: Any, base: str, n: int) -> np.ndarray:
    if "reduction" in group_names(idata):
        red = get_group(idata, "reduction")
        if f"{base}_kept" in red:
            return red[f"{base}_kept"].values.astype(bool)
    return np.ones(n, dtype=bool)


def plot_theta_forest(idata: Any, *, hdi_prob: float = 0.94, floor: float = 1e-9) -> Figure:
    """Forest of ``E[theta]`` with its ``hdi_prob`` HDI, one panel per noise layer.

    Structures are sorted by their posterior mean. Removed structures (``theta = 0``) are
    drawn in grey at ``floor`` on the logarithmic axis.
    """
    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob must lie in (0, 1), got {hdi_prob}")
    post = get_group(idata, "posterior")
    names = _theta_vars(idata)
    fig, axes = _grid(len(names), height=4.2)
    for ax, var in zip(axes, names):
        da = post[var]
        values = da.values.reshape(-1, da.shape[-1])  # [chain * draw, n]
        mean = values.mean(0)
        interval = hdi(values, hdi_prob)  # [n, 2]
        base = var[: -len("_theta")]
        kept = _kept(idata, base, len(mean)) & (mean > 0)
        order = np.argsort(np.where(kept, mean, -1.0))
        y = np.arange(len(order))
        shown_mean = np.where(kept, mean, floor)[order]
        lo = np.clip(np.where(kept, interval[:, 0], floor)[order], floor, None)
        hi = np.clip(np.where(kept, interval[:, 1], floor)[order], floor, None)
        k = kept[order]
        ax.hlines(y[k], lo[k], hi[k], color=KEPT_COLOR, linewidth=1.0, alpha=0.7)
        ax.plot(shown_mean[k], y[k], "o", color=KEPT_COLOR, markersize=2.5, label="kept")
        if (~k).any():
            ax.plot(shown_mean[~k], y[~k], "x", color=REMOVED_COLOR, markersize=3, label="removed")
        ax.set_xscale("log")
        ax.set_xlim(floor / 3, 2.0)
        ax.set_yticks([])
        ax.set_ylim(-1, len(order))
        dim = da.dims[-1]
        ax.set_title(f"{base}: {int(k.sum())}/{len(k)} kept", fontsize=10)
        ax.set_xlabel(r"$E[\theta]$ and " + f"{int(hdi_prob * 100)}% HDI")
        ax.set_ylabel(f"{dim} (sorted)")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Posterior of the multiplicative noise per layer")
    return fig


def _symlog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log10(1.0 + np.abs(x))


def _symlog_inv(t: np.ndarray) -> np.ndarray:
    return np.sign(t) * (10.0 ** np.abs(t) - 1.0)


def _symlog_ticks(lo: float, hi: float, max_ticks: int = 5) -> list[float]:
    """Tick positions 0 and +-10^k over a symlog range, thinned to about ``max_ticks``."""
    neg = list(range(1, int(math.floor(-lo)) + 1)) if lo < -1 else []
    pos = list(range(1, int(math.floor(hi)) + 1)) if hi > 1 else []
    step = max(1, math.ceil((len(neg) + len(pos) + 1) / max_ticks))
    ticks = [-(10.0**k) for k in neg[::-1] if k % step == 0] + [0.0]
    ticks += [10.0**k for k in pos if k % step == 0]
    return ticks


def plot_delta_f(idata: Any, criterion: str = "bmrs_n", *, bins: int = 30) -> Figure:
    """Histogram of ``dF`` per layer for a threshold-free criterion, with the line ``dF = 0``.

    The axis is symmetric-logarithmic (``dF`` of kept structures reaches ``-1e6`` and
    beyond); structures already removed are stacked in grey.
    """
    red = get_group(idata, "reduction")
    if "dF_criterion" not in red.coords or criterion not in list(red["dF_criterion"].values):
        known = list(red["dF_criterion"].values) if "dF_criterion" in red.coords else []
        raise ValueError(f"no dF for criterion {criterion!r} in the reduction group; have {known}")
    names = [str(v) for v in red.data_vars if str(v).endswith("_dF")]
    fig, axes = _grid(len(names))
    for ax, var in zip(axes, names):
        base = var[: -len("_dF")]
        df = red[var].sel(dF_criterion=criterion).values.astype(float)
        kept = _kept(idata, base, len(df))
        finite = np.isfinite(df)
        t = _symlog(df[finite])
        lo, hi = (min(t.min(), -0.5), max(t.max(), 0.5)) if t.size else (-1.0, 1.0)
        edges = _symlog_inv(np.linspace(lo, hi, bins + 1))
        if t.size:  # the inverse transform may round the outer edges inwards
            edges[0] = min(edges[0], df[finite].min())
            edges[-1] = max(edges[-1], df[finite].max())
        ax.hist([df[finite & kept], df[finite & ~kept]], bins=edges, stacked=True,
                color=[KEPT_COLOR, REMOVED_COLOR], label=["kept", "removed"])
        ax.axvline(0.0, color=STOP_COLOR, linestyle="--", linewidth=1.2, label="dF = 0")
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(_symlog_ticks(lo, hi))
        ax.tick_params(axis="x", labelsize=8)
        n_pos = int((df[finite & kept] >= 0).sum())
        ax.set_title(f"{base}: {n_pos} kept with dF >= 0", fontsize=10)
        ax.set_xlabel(f"dF ({criterion})")
        ax.set_ylabel("structures")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Change in log evidence when a structure is removed ({criterion})")
    return fig


def _metric(point: Mapping[str, Any]) -> tuple[str, float]:
    for key in ("accuracy", "val_accuracy", "test_accuracy"):
        if point.get(key) is not None:
            return "accuracy", float(point[key])
    for key in ("rmse", "val_rmse"):
        if point.get(key) is not None:
            return "rmse", float(point[key])
    raise ValueError(f"point has no accuracy or rmse: {sorted(point)}")


def plot_accuracy_vs_compression(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    points: Sequence[Mapping[str, Any]] = (),
    *,
    title: str = "Accuracy vs compression",
) -> Figure:
    """Accuracy (or RMSE) against compression.

    Args:
        curves: criterion -> points of
            :func:`~pyro_prune.inference.schedules.post_training_curve` (each with
            ``compression``, ``accuracy`` or ``rmse``, ``before_stop``). The last point
            before the threshold-free stop (``before_stop``) is starred and marked by a
            vertical line.
        points: single results to overlay (each with ``label``, ``compression`` and
            ``accuracy``/``rmse``), e.g. the models of continuous pruning.
    """
    if not curves and not points:
        raise ValueError("nothing to plot: give curves or points")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ylabel = "accuracy"
    stop_drawn = False
    for name, curve in curves.items():
        if not curve:
            continue
        pts = sorted(curve, key=lambda p: float(p["compression"]))
        xs = [100 * float(p["compression"]) for p in pts]
        measured = [_metric(p) for p in pts]
        ylabel = measured[0][0]
        ys = [m[1] for m in measured]
        (line,) = ax.plot(xs, ys, "-o", markersize=3, label=f"{name} (post-training ranking)")
        before = [p for p in pts if p.get("before_stop")]
        if before:
            stop = max(before, key=lambda p: float(p["compression"]))
            sx, sy = 100 * float(stop["compression"]), _metric(stop)[1]
            ax.plot([sx], [sy], "*", markersize=14, color=STOP_COLOR, zorder=5,
                    markeredgecolor=line.get_color(), markeredgewidth=1.5,
                    label=None if stop_drawn else "threshold-free stop (last dF >= 0)")
            ax.axvline(sx, color=STOP_COLOR, linestyle=":", linewidth=1)
            stop_drawn = True
    markers = "sD^vP<>X"
    for i, p in enumerate(points):
        metric, y = _metric(p)
        ylabel = metric
        ax.plot([100 * float(p["compression"])], [y], markers[i % len(markers)], markersize=8,
                markeredgecolor="black", label=str(p.get("label", f"point {i}")))
    ax.set_xlabel("compression (% of parameters removed)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def plot_history(history: Sequence[Mapping[str, Any]], *, title: str = "Training") -> Figure:
    """Loss, accuracy and kept structures per epoch of a :func:`~pyro_prune.inference.fit`."""
    if not history:
        raise ValueError("history is empty")
    epochs = [int(r["epoch"]) for r in history]
    fig, axes = _grid(3, max_cols=3, width=3.8, height=3.0)
    axes[0].plot(epochs, [float(r["loss"]) for r in history], "-", color=KEPT_COLOR)
    axes[0].set_ylabel("negative ELBO per datum")
    for key, label in (("val_accuracy", "validation"), ("train_accuracy_running", "train (running)"),
                       ("val_rmse", "validation RMSE")):
        pts = [(e, float(r[key])) for e, r in zip(epochs, history) if r.get(key) is not None]
        if pts:
            axes[1].plot(*zip(*pts), "-", label=label)
    axes[1].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    kept = [sum(r["kept"].values()) if isinstance(r.get("kept"), Mapping) else math.nan for r in history]
    axes[2].plot(epochs, kept, "-", color=KEPT_COLOR, label="kept structures")
    axes[2].set_ylabel("kept structures")
    comp = [r.get("compression") for r in history]
    if any(c is not None for c in comp):
        twin = axes[2].twinx()
        twin.plot(epochs, [100 * c if c is not None else math.nan for c in comp], "--",
                  color=STOP_COLOR, label="compression")
        twin.set_ylabel("compression (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
