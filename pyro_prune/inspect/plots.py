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
* :func:`plot_decision` — the same for any criterion with a removal rule (a thresholded
  score is shown against its threshold).
* :func:`plot_accuracy_vs_compression` — accuracy against compression when structures are
  removed in the order of a criterion, with the threshold-free stopping point (the last
  structure with ``dF >= 0``) and the results of continuous pruning as markers.
* :func:`plot_history` — loss, accuracy and kept structures per epoch of a fit.
* :func:`plot_bayes_factor_curves` — loss, ``log BF`` and sparsity per epoch of Bayes-factor
  pruning runs (:func:`plot_learning_curves` writes it to a file).
* :func:`plot_widths` — the width (structures) of every layer before and after pruning.
* :func:`plot_summary` — parameters, MACs, latency and the W2 shift of a pruned network
  relative to the unpruned one.
* :func:`plot_reliability` — reliability diagrams (accuracy against confidence) with the
  expected calibration error, e.g. before and after pruning.

:func:`figure_html` embeds a figure in HTML (a notebook cell, an executed documentation page).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pyro_prune.inspect.arviz_compat import get_group, group_names
from pyro_prune.inspect.summary import hdi

__all__ = [
    "plot_accuracy_vs_compression",
    "plot_bayes_factor_curves",
    "plot_decision",
    "plot_delta_f",
    "plot_history",
    "plot_learning_curves",
    "plot_reliability",
    "plot_summary",
    "plot_widths",
    "plot_theta_forest",
    "figure_html",
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


def figure_html(fig: Figure, *, dpi: int = 90, alt: str = "figure") -> str:
    """An ``<img>`` tag holding ``fig`` as an inline PNG (base64 data URI)."""
    import base64
    import html
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" />'


def _figure_legend(fig: Figure, axes: Sequence[Any]) -> None:
    """One legend for the whole figure, below the panels (never over the data)."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=len(seen),
                   fontsize=8, frameon=False)


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
    _figure_legend(fig, axes)
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
        edges = np.union1d(edges, [0.0])  # dF = 0 is a bin edge: removal starts right of it
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
    _figure_legend(fig, axes)
    fig.suptitle(f"Change in log evidence when a structure is removed ({criterion}): "
                 "removed at dF >= 0")
    return fig


def plot_decision(idata: Any, criterion: str, *, bins: int = 30) -> Figure:
    """Why each structure was kept or removed by ``criterion``, per layer.

    A threshold-free criterion shows its ``dF`` (:func:`plot_delta_f`: removed at
    ``dF >= 0``); a thresholded one (``snr``, ``e_theta``) the histogram of its score on a
    log axis with its threshold (removed below it). Structures already removed are grey.
    """
    from pyro_prune.reduction import get_criterion

    crit = get_criterion(criterion)
    if crit.threshold_free:
        return plot_delta_f(idata, criterion, bins=bins)
    if crit.default_threshold is None:
        raise ValueError(f"criterion {criterion!r} only ranks; it has no removal rule to plot")
    red = get_group(idata, "reduction")
    if "criterion" not in red.coords or criterion not in list(red["criterion"].values):
        known = list(red["criterion"].values) if "criterion" in red.coords else []
        raise ValueError(f"no score for criterion {criterion!r} in the reduction group; have {known}")
    names = [str(v) for v in red.data_vars if str(v).endswith("_score")]
    threshold = float(crit.default_threshold)
    fig, axes = _grid(len(names))
    for ax, var in zip(axes, names):
        base = var[: -len("_score")]
        score = red[var].sel(criterion=criterion).values.astype(float)
        kept = _kept(idata, base, len(score))
        ok = np.isfinite(score) & (score > 0)
        lo = min(score[ok].min(), threshold) / 2 if ok.any() else threshold / 10
        hi = max(score[ok].max(), threshold) * 2 if ok.any() else threshold * 10
        edges = np.geomspace(lo, hi, bins + 1)
        ax.hist([np.clip(score[ok & kept], lo, hi), np.clip(score[ok & ~kept], lo, hi)], bins=edges,
                stacked=True, color=[KEPT_COLOR, REMOVED_COLOR], label=["kept", "removed"])
        ax.axvline(threshold, color=STOP_COLOR, linestyle="--", linewidth=1.2,
                   label=f"threshold {threshold:g}")
        ax.set_xscale("log")
        ax.set_title(f"{base}: {int(kept.sum())}/{len(kept)} kept", fontsize=10)
        ax.set_xlabel(f"{criterion} score")
        ax.set_ylabel("structures")
    _figure_legend(fig, axes)
    fig.suptitle(f"{criterion} per structure: removed below the threshold")
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
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8,
               frameon=False)
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
    _figure_legend(fig, axes[1:2])
    fig.suptitle(title)
    return fig


def plot_bayes_factor_curves(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    title: str | None = None,
    log_threshold: float | None = 0.0,
) -> Figure:
    """Learning curves of Bayes-factor pruning runs, as in the figures of Mathew & Rowe.

    Three panels against the epoch: the loss (``train_loss`` solid, ``val_loss`` dashed:
    mean negative log likelihood), ``log BF`` (symmetric-log axis; filled markers where a
    pruning was applied; ``log_threshold`` = ``log beta`` as a dotted line, ``None`` for
    none) and the ``sparsity``. ``history`` is the history of one fit with
    :class:`~pyro_prune.reduction.bayes_factor_pruning.BayesFactorPruning` or a mapping
    ``label -> history`` to overlay several runs.
    """
    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    if not runs or any(len(h) == 0 for h in runs.values()):
        raise ValueError("history must hold at least one epoch (for every run)")
    fig = Figure(figsize=(13, 3.8))
    ax_loss, ax_bf, ax_sp = fig.subplots(1, 3)
    for i, (label, rows) in enumerate(runs.items()):
        color = f"C{i}"
        width = max(0.8, 2.6 - 0.5 * i)  # overlapping runs stay visible
        epochs = [int(r["epoch"]) for r in rows]
        suffix = f" {label}" if label else ""
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            pts = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=color, lw=width, label=f"{key}{suffix}")
        bf = [(e, r["log_bayes_factor"], bool(r.get("pruned"))) for e, r in zip(epochs, rows)
              if r.get("log_bayes_factor") is not None]
        if bf:
            ax_bf.plot([b[0] for b in bf], [b[1] for b in bf], "-", color=color, alpha=0.6,
                       lw=width, label=label or None)
            acc = [b for b in bf if b[2]]
            rej = [b for b in bf if not b[2]]
            if acc:
                ax_bf.plot([b[0] for b in acc], [b[1] for b in acc], "o", color=color)
            if rej:
                ax_bf.plot([b[0] for b in rej], [b[1] for b in rej], "x", color=color)
        sp = [(e, r["sparsity"]) for e, r in zip(epochs, rows) if r.get("sparsity") is not None]
        if sp:
            ax_sp.step(*zip(*sp), where="post", color=color, lw=width, label=label or None)
    if log_threshold is not None:
        ax_bf.axhline(log_threshold, color="k", ls=":", lw=1, label=f"log beta = {log_threshold:.3g}")
    ax_bf.set_yscale("symlog", linthresh=1.0)
    ax_loss.set(xlabel="epoch", ylabel="mean NLL", title="loss")
    ax_bf.set(xlabel="epoch", ylabel="log BF (nats)", title="Bayes factor (o applied, x rejected)")
    ax_sp.set(xlabel="epoch", ylabel="sparsity", title="sparsity", ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_bf, ax_sp):
        ax.grid(alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_learning_curves(
    history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    log_threshold: float | None = 0.0,
) -> Path:
    """:func:`plot_bayes_factor_curves` written to ``path`` (PNG unless the suffix says
    otherwise, atomically, :func:`save_figure`); returns the path written."""
    return save_figure(plot_bayes_factor_curves(history, title=title, log_threshold=log_threshold), path)


def plot_widths(structures: Mapping[str, int], kept: Mapping[str, int], *,
                title: str = "Width per layer") -> Figure:
    """Horizontal bars of every layer's structures before (``structures``) and after
    (``kept``) pruning, in the order given, each annotated ``kept / total``."""
    if not structures:
        raise ValueError("structures is empty")
    missing = sorted(set(structures) - set(kept))
    if missing:
        raise ValueError(f"kept has no count for {missing}")
    names = list(structures)
    total = np.array([int(structures[n]) for n in names], dtype=float)
    left = np.array([int(kept[n]) for n in names], dtype=float)
    fig = Figure(figsize=(6.4, 0.9 + 0.38 * len(names)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    ax.barh(y, total, color=REMOVED_COLOR, alpha=0.45, label="before")
    ax.barh(y, left, color=KEPT_COLOR, height=0.5, label="after")
    for yi, t, k in zip(y, total, left):
        ax.text(t, yi, f" {int(k)}/{int(t)}", va="center", fontsize=8)
    ax.set_yticks(y, [n.removesuffix("_gate") for n in names], fontsize=8)
    ax.set_xlabel("structures (neurons, channels, heads)")
    ax.set_xlim(0, total.max() * 1.25)
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
    ax.set_title(title, loc="left")
    return fig


def plot_summary(metrics: Mapping[str, Any], *, title: str = "Pruned against unpruned") -> Figure:
    """Bars of the pruned network's size, MACs and latency as a fraction of the unpruned
    network's, and its W2 shift of the posterior predictive (``w2_normalized``: 0 = the
    same predictive, 1 = as far as removing everything).

    ``metrics`` holds ``params_full``/``params_pruned``, ``macs_full``/``macs_pruned``,
    and optionally ``latency_full_ms``/``latency_pruned_ms`` (medians, shown as numbers),
    ``speedup`` (the latency bar is ``1 / speedup`` when given: the median of paired
    per-round ratios) and ``w2_normalized`` (the keys of a run's ``metrics.json``).
    """
    bars: list[tuple[str, float, str]] = []
    for key, label in (("params", "parameters"), ("macs", "MACs per input"),
                       ("latency", "latency")):
        full_key, pruned_key = ((f"{key}_full", f"{key}_pruned") if key != "latency"
                                else ("latency_full_ms", "latency_pruned_ms"))
        full, pruned = metrics.get(full_key), metrics.get(pruned_key)
        if full is not None and pruned is not None and float(full) > 0:
            ratio = float(pruned) / float(full)
            if key == "latency" and metrics.get("speedup"):
                ratio = 1.0 / float(metrics["speedup"])  # paired per-round ratios, not two medians
            bars.append((label, ratio, f"{ratio:.2f}x ({_short(pruned)} / {_short(full)})"))
    if metrics.get("w2_normalized") is not None:
        w2 = float(metrics["w2_normalized"])
        bars.append(("W2 shift / W2(empty)", w2, f"{w2:.3f}"))
    if not bars:
        raise ValueError("metrics has none of params, macs, latency or w2_normalized")
    fig = Figure(figsize=(6.4, 0.9 + 0.45 * len(bars)), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(bars))[::-1]
    colors = [STOP_COLOR if b[0].startswith("W2") else KEPT_COLOR for b in bars]
    ax.barh(y, [b[1] for b in bars], color=colors, height=0.55)
    for yi, (_, v, text) in zip(y, bars):
        ax.text(v, yi, " " + text, va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_yticks(y, [b[0] for b in bars], fontsize=9)
    ax.set_xlim(0, max(1.0, max(b[1] for b in bars)) * 1.6)
    ax.set_xlabel("pruned / unpruned (dotted: unchanged)")
    ax.set_title(title, loc="left")
    return fig


def _short(value: Any) -> str:
    v = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def plot_reliability(curves: Mapping[str, Any], *, title: str = "Calibration") -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one line per entry of
    ``curves`` (name -> :class:`~pyro_prune.calibration.Calibration` or its ``to_json()``),
    the diagonal of perfect calibration, and each entry's ECE in the legend; a histogram of
    the confidences below."""
    if not curves:
        raise ValueError("curves is empty")
    fig = Figure(figsize=(5.2, 5.4), layout="constrained")
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ":", color="black", linewidth=1, label="perfect calibration")
    markers = "os^D"
    for i, (name, cal) in enumerate(curves.items()):
        data: dict[str, Any] = dict(cal) if isinstance(cal, Mapping) else cal.to_json()
        conf = np.array([np.nan if v is None else v for v in data["confidence"]], dtype=float)
        acc = np.array([np.nan if v is None else v for v in data["accuracy"]], dtype=float)
        count = np.asarray(data["count"], dtype=float)
        edges = np.asarray(data["edges"], dtype=float)
        ok = np.isfinite(conf) & np.isfinite(acc)
        (line,) = ax.plot(conf[ok], acc[ok], "-" + markers[i % len(markers)], markersize=4,
                          label=f"{name} (ECE {float(data['ece']):.3f})")
        hist.stairs(count / max(1.0, count.sum()), edges, color=line.get_color(), alpha=0.8)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8,
               frameon=False)
    ax.set_title(title, loc="left")
    hist.set_xlabel("confidence (max class probability)")
    hist.set_ylabel("share")
    return fig
