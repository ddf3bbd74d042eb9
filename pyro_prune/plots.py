"""Deprecated: moved to :mod:`pyro_prune.inspect.plots` (this alias goes in the next release)."""

from __future__ import annotations

from pyro_prune._deprecation import moved_names

__getattr__ = moved_names(__name__, {name: "pyro_prune.inspect.plots" for name in (
    "KEPT_COLOR", "REMOVED_COLOR", "STOP_COLOR", "figure_html", "plot_accuracy_vs_compression",
    "plot_decision", "plot_delta_f", "plot_history", "plot_reliability", "plot_summary",
    "plot_theta_forest", "plot_widths", "save_figure")})
