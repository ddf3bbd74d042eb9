"""What ``pyro-prune report`` rebuilds for a run folder written by an older release.

A run folder keeps the trained model (``model.pt``) and its settings (``config.json``), but
an older ``pyro-prune fit`` wrote fewer measurements into ``metrics.json`` (no calibration
before the reliability diagram existed, a latency timed in a fixed order before the
interleaved timing, a reduction group without the run's own criterion, ...). The report
rebuilds from the saved files what needs only the model, and names what it cannot:

* rebuilt from ``model.pt``: parameters and MACs of the pruned and of the unpruned network,
  the compression, the kept structures per layer (the summary and width figures), and the
  run criterion's scores (the decision figure);
* not rebuilt (they need the test data or timing): latency, the W2 shift, calibration, the
  test-set log predictive density and PSIS-LOO. The report says which are missing and that
  ``pyro-prune fit ... --restart`` measures them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Backfill", "backfill_metrics", "reduction_of"]

#: measurements only ``fit`` can make (test data or timing): key in metrics.json -> what it is
MEASURED_BY_FIT = {
    "latency_full_ms": "latency (batch 256)",
    "w2_normalized": "the W2 shift of the posterior predictive",
    "test_lpd": "the test-set log predictive density",
    "elpd_loo": "PSIS-LOO",
}


@dataclass
class Backfill:
    """The metrics of a run folder completed from its model, and what is still missing."""

    metrics: dict[str, Any]
    #: keys computed here from ``model.pt`` (absent from ``metrics.json``)
    recomputed: list[str] = field(default_factory=list)
    #: measurements the run folder lacks and the report cannot make (descriptions)
    missing: list[str] = field(default_factory=list)
    #: the latency was timed before the interleaved, warmed-up timing (order may bias it)
    old_latency: bool = False

    def note(self) -> str | None:
        """One paragraph for the report, or ``None`` for a complete run folder."""
        parts = []
        if self.recomputed:
            parts.append(f"recomputed from `model.pt` (absent from `metrics.json`): "
                         f"{', '.join(self.recomputed)}")
        if self.missing:
            parts.append(f"not in this run folder and not rebuilt by the report (they need the "
                         f"test data or timing): {', '.join(self.missing)}; run the same "
                         f"`pyro-prune fit` command with `--restart` to measure them")
        if self.old_latency:
            parts.append("the latency was timed in a fixed order by an older release (not "
                         "interleaved): the order can bias its speed-up")
        if not parts:
            return None
        return ("This run folder's metrics.json is incomplete (an older release, or a run "
                "without these measurements): " + "; ".join(parts) + ".")


@contextlib.contextmanager
def _all_kept(model: Any) -> Iterator[None]:
    gates = model.gates()
    saved = {name: g.kept.clone() for name, g in gates.items()}
    try:
        for g in gates.values():
            g.kept.fill_(True)
        yield
    finally:
        for name, kept in saved.items():
            gates[name].kept.copy_(kept)


def backfill_metrics(model: Any, input_shape: tuple[int, ...], metrics: Mapping[str, Any],
                     out: Path, *, calibration_file: str) -> Backfill:
    """``metrics`` with what ``model`` gives filled in (see the module docstring)."""
    from pyro_prune.convert import compression, count_macs, count_params, to_deterministic

    filled = dict(metrics)
    recomputed: list[str] = []
    size_keys = ("params_full", "params_pruned", "macs_full", "macs_pruned")
    if any(filled.get(k) is None for k in size_keys):
        pruned = to_deterministic(model)
        with _all_kept(model):
            full = to_deterministic(model)
        values = {"params_full": count_params(full), "params_pruned": count_params(pruned),
                  "macs_full": count_macs(full, input_shape), "macs_pruned": count_macs(pruned, input_shape)}
        for key in size_keys:
            if filled.get(key) is None:
                filled[key] = values[key]
                recomputed.append(key)
    if filled.get("compression") is None:
        filled["compression"] = compression(model)
        recomputed.append("compression")
    if not filled.get("kept") or not filled.get("structures"):
        filled["kept"] = model.kept_counts()
        filled["structures"] = {n: g.num_structures for n, g in model.gates().items()}
        recomputed.append("kept structures")
    missing = [what for key, what in MEASURED_BY_FIT.items() if filled.get(key) is None]
    if model.likelihood.value == "categorical" and not (out / calibration_file).exists():
        missing.append("calibration")
    old_latency = filled.get("latency_full_ms") is not None and "latency_rounds" not in filled
    return Backfill(filled, recomputed, missing, old_latency)


def reduction_of(model: Any, criterion: str) -> Any:
    """An InferenceData with only the ``reduction`` group of ``criterion``, from the model (for
    the decision figure of a run whose saved InferenceData predates the run's criterion)."""
    from pyro_prune.inspect.arviz_compat import make_inference_data
    from pyro_prune.inspect.reduction_group import reduction_dataset

    return make_inference_data({"reduction": reduction_dataset(model, [criterion])})
