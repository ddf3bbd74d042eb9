"""What a run measures after training: accuracy, size, latency, predictive shift, calibration, evidence.

:func:`evaluate_fitted` runs the stages of ``pyro-prune fit`` after the training and writes
their files into the run folder; the timing helpers (:func:`interleaved_timings`,
:func:`paired_speedup`) measure networks side by side, so that a change in the load of the
machine affects all of them alike.
"""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from pyro_prune._io import (
    save_torch,
)
from pyro_prune.export import export_program
from pyro_prune.run_folder import (
    CALIBRATION_FILE,
    CONVERTED_STATE_FILE,
    CURVE_FILE,
    EXPORTED_PROGRAM_FILE,
    IDATA_FILE,
    LPD_FILE,
    write_json,
)

__all__ = [
    "CALIBRATION_DRAWS",
    "USER_EVAL_EXAMPLES",
    "accuracy_curves",
    "all_kept",
    "evaluate_fitted",
    "interleaved_timings",
    "median_latencies",
    "paired_speedup",
    "subset",
]

#: examples of a user's data set (not in memory as tensors) that the evaluation after training
#: collects for the W2 check, calibration, test-set lpd and the InferenceData, when
#: ``--eval-examples`` is not given (accuracy always uses the whole test set)
USER_EVAL_EXAMPLES = 1000


@contextlib.contextmanager
def all_kept(model: Any) -> Iterator[dict[str, Tensor]]:
    """Temporarily restore every removed structure; yields the kept masks to return to."""
    kept = model.kept_mask()
    with model.masked({name: torch.ones_like(m) for name, m in kept.items()}, restore=True):
        yield kept


def interleaved_timings(modules: Sequence[nn.Module], x: Tensor, *, repeats: int = 21,
                        min_time_s: float = 1.0, warmup: int = 5,
                        min_warmup_s: float = 0.2) -> list[list[float]]:
    """Wall times (seconds) of ``m(x)`` for each module, in eval mode, one list per module.

    Each module is warmed up (at least ``warmup`` calls and ``min_warmup_s`` seconds), then
    the modules are timed interleaved, one call of each per round, the order of the calls
    reversed every other round, for at least ``repeats`` rounds and ``min_time_s`` seconds:
    a change in the load of the machine, or a cache warmed by the module before, affects all
    of them alike. Round ``r`` of every list was measured at the same time.
    """
    for m in modules:
        m.eval()
    times: list[list[float]] = [[] for _ in modules]
    order = list(range(len(modules)))
    with torch.inference_mode():
        for m in modules:
            t0, calls = time.perf_counter(), 0
            while calls < warmup or time.perf_counter() - t0 < min_warmup_s:
                m(x)
                calls += 1
        start, r = time.perf_counter(), 0
        while r < repeats or time.perf_counter() - start < min_time_s:
            for i in (order if r % 2 == 0 else order[::-1]):
                t0 = time.perf_counter()
                modules[i](x)
                times[i].append(time.perf_counter() - t0)
            r += 1
    return times


def median_latencies(modules: Sequence[nn.Module], x: Tensor, **options: Any) -> list[float]:
    """Median wall time (seconds) of ``m(x)`` for each module (:func:`interleaved_timings`)."""
    return [statistics.median(t) for t in interleaved_timings(modules, x, **options)]


def paired_speedup(reference: Sequence[float], other: Sequence[float]) -> float:
    """The median over rounds of ``reference / other`` of times measured side by side: a
    round slowed down by the machine slows both, so the ratio of equal networks stays ~1."""
    if len(reference) != len(other) or not reference:
        raise ValueError("reference and other must be non-empty timings of the same rounds")
    return statistics.median(r / o for r, o in zip(reference, other))


def subset(data: Any, examples: int | None, seed: int) -> Any:
    """``examples`` points of ``data`` (a stratified, seeded split), or all of it."""
    from pyro_prune.data import train_val_split

    if examples is not None and examples < len(data):
        return train_val_split(data, val_fraction=examples / len(data), seed=seed)[1]
    return data


#: posterior draws of the calibration check
CALIBRATION_DRAWS = 32


def _calibrations(model: Any, held: Any, *, seed: int) -> dict[str, dict[str, Any]]:
    """Reliability bins and ECE of the posterior predictive on ``held``, with the removed
    structures restored (``restored``) and as pruned (``pruned``); empty for regression."""
    from pyro_prune.calibration import calibration
    from pyro_prune.models.base import Likelihood
    from pyro_prune.predictive import posterior_predictive

    if model.likelihood is not Likelihood.CATEGORICAL:
        return {}
    x, y = held.tensors
    out = {}
    for name, restore in (("restored", True), ("pruned", False)):
        with all_kept(model) if restore else contextlib.nullcontext():
            probs = posterior_predictive(model, x, draws=CALIBRATION_DRAWS, engine="fast",
                                         output="probs", seed=seed).mean(0)
        out[name] = calibration(probs, y).to_json()
    return out


def accuracy_curves(model: Any, train: Any, test: Any, criteria: Sequence[str], *, points: int,
                    batch_size: int, lr: float, seed: int, progress: bool,
                    max_fraction: float = 0.95,
                    num_data: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Accuracy vs compression when the kept structures are removed in each criterion's order.

    ``points`` fractions evenly spaced in ``[0, max_fraction]``, plus the stopping point of
    every threshold-free criterion among ``criteria`` (the fraction of structures with
    ``dF >= 0``) so that it is a point of every curve; one epoch of fine-tuning per point
    (:func:`~pyro_prune.inference.post_training_curve`).
    """
    from pyro_prune.inference import post_training_curve
    from pyro_prune.reduction import get_criterion, structure_removals

    total = sum(int(g.kept.sum()) for g in model.gates().values())
    stops = set()
    for crit in criteria:  # every threshold-free criterion's own stopping point is a point
        if total and model.noise_layers() and get_criterion(crit).threshold_free:
            n_stop = sum(int(m.sum()) for m in structure_removals(model, crit).values())
            stops.add(round(n_stop / total, 6))
    grid = [max_fraction * i / max(1, points - 1) for i in range(points)] if points > 1 else [0.0]
    fractions = sorted({round(f, 6) for f in grid} | stops)
    fractions = [f for f in fractions if 0.0 <= f < 1.0]
    curves = {}
    for crit in criteria:
        curves[crit] = post_training_curve(copy.deepcopy(model), train, test, crit,
                                           fractions=fractions, finetune_epochs=1,
                                           batch_size=batch_size, lr=lr, seed=seed,
                                           progress=progress,
                                           fit_kwargs={"num_data": num_data} if num_data else None)
    return curves


def _test_chance_note(cfg: Any, model: Any, result: Any, train: Any, test: Any,
                      test_metrics: dict[str, float]) -> str | None:
    """The note of a classifier whose test accuracy is at chance (none after a divergence,
    which the run said already), with what to change on the command line."""
    from pyro_prune.inference.batches import dataset_length
    from pyro_prune.inference.divergence import chance_level, chance_note

    labels = train.tensors[1] if isinstance(train, TensorDataset) else None
    chance = chance_level(model, labels) if labels is not None and labels.dim() == 1 else None
    if chance is None:
        return None
    checks = (f"the learning rate (--lr {cfg.lr:g}), the KL weight (--kl-scale {cfg.kl_scale}) and "
              f"the number of epochs (--epochs {cfg.epochs})")
    return chance_note(test_metrics.get("accuracy"), chance[0], dataset_length(test), where="test",
                       checks=checks, history=result.history)


def evaluate_fitted(cfg: Any, out: Path, model: Any, result: Any, train: Any, test: Any, *,
                    criterion: str | None, user_data: bool, num_data: int | None, measure: bool,
                    progress: bool, say: Callable[[str], None],
                    ) -> tuple[dict[str, Any], Any, dict[str, list[dict[str, Any]]], Tensor]:
    """Measure a fitted run and write what it measures into the run folder ``out``.

    The stages, each announced through ``say``: accuracy on the test set; conversion (the
    converted network's state dict and ``torch.export`` program), parameters and MACs of it
    and of the unpruned network; latency of both (``measure``); the W2 shift of the posterior
    predictive caused by the removals; calibration; the test-set log predictive density,
    pruned and restored; posterior draws for ArviZ and PSIS-LOO on training data; with
    ``cfg.curve_points``, the accuracy-vs-compression curve of ``criterion``. Returns
    ``(metrics, idata, curves, pointwise test lpd)``; the caller writes ``metrics.json`` last.
    """
    from pyro_prune import inspect as pa
    from pyro_prune.convert import compression, count_macs, count_params, to_deterministic
    from pyro_prune.inference import evaluate
    from pyro_prune.predictive import compare_lpd, log_predictive_density, w2_shift
    from pyro_prune.user_data import to_tensors

    fit_time = sum(float(r.get("epoch_time_s", 0.0)) for r in result.history)
    stages = ["evaluate on the test set", "convert and count", "latency (batch 256)",
              "W2 shift of the predictive", "calibration", "test-set log predictive density",
              "posterior draws for ArviZ", "PSIS-LOO",
              "accuracy-vs-compression curve"]
    if not measure:
        stages.remove("latency (batch 256)")
    if cfg.curve_points <= 0:
        stages.remove("accuracy-vs-compression curve")
    t_eval = time.perf_counter()

    def stage(name: str) -> None:
        say(f"[{stages.index(name) + 1}/{len(stages)}] {name} "
            f"({time.perf_counter() - t_eval:.0f} s into the evaluation)")

    stage("evaluate on the test set")
    test_metrics = evaluate(model, test)
    # the checks below need tensors: a user's data set gives a sample (USER_EVAL_EXAMPLES)
    eval_limit = cfg.eval_examples or USER_EVAL_EXAMPLES
    test_t = test if isinstance(test, TensorDataset) else to_tensors(test, eval_limit, seed=cfg.seed)
    train_t = (train if isinstance(train, TensorDataset) or not user_data
               else to_tensors(train, eval_limit, seed=cfg.seed))
    stage("convert and count")
    converted = to_deterministic(model)
    save_torch(converted.state_dict(), out / CONVERTED_STATE_FILE)
    example = test_t.tensors[0][:2]
    export_program(converted, example, out / EXPORTED_PROGRAM_FILE)
    input_shape = tuple(test_t.tensors[0].shape[1:])
    with all_kept(model) as kept_masks:
        full_net = to_deterministic(model)
    metrics: dict[str, Any] = {
        "method": cfg.method, "model": cfg.model, "data": cfg.data,
        **{f"test_{k}": v for k, v in test_metrics.items()},
        "compression": compression(model),
        "params_full": count_params(full_net), "params_pruned": count_params(converted),
        "macs_full": count_macs(full_net, input_shape), "macs_pruned": count_macs(converted, input_shape),
        "kept": model.kept_counts(),
        "structures": {n: g.num_structures for n, g in model.gates().items()},
        "epochs_run": len(result.history), "fit_time_s": fit_time,
        "pruning_report": str(result.report) if result.report is not None else None,
        "chance_note": _test_chance_note(cfg, model, result, train_t, test, test_metrics),
    }
    if measure:
        stage("latency (batch 256)")
        batch = test_t.tensors[0][:256]
        if len(batch) < 256:
            batch = batch.repeat(math.ceil(256 / len(batch)), *([1] * (batch.dim() - 1)))[:256]
        full_t, pruned_t = interleaved_timings([full_net, converted], batch)
        metrics["latency_full_ms"] = 1e3 * statistics.median(full_t)
        metrics["latency_pruned_ms"] = 1e3 * statistics.median(pruned_t)
        metrics["speedup"] = paired_speedup(full_t, pruned_t)
        metrics["latency_rounds"] = len(full_t)

    stage("W2 shift of the predictive")
    held = subset(test_t, cfg.eval_examples, cfg.seed)
    with all_kept(model):
        shift = w2_shift(model, None, kept_masks, held.tensors[0][:512], seed=cfg.seed)
    metrics.update(w2=shift.w2, w2_empty=shift.w2_empty, w2_normalized=shift.normalized)
    stage("calibration")
    calibrations = _calibrations(model, held, seed=cfg.seed)
    if calibrations:
        write_json(out / CALIBRATION_FILE, calibrations)
        metrics.update({f"ece_{k}": v["ece"] for k, v in calibrations.items()})
    # the uncertainty cost on new data: test-set log predictive density of the pruned network
    # and of the same network with every structure restored, paired over the test points
    stage("test-set log predictive density")
    lpd = log_predictive_density(model, held, draws=cfg.num_samples, seed=cfg.seed)
    with all_kept(model):
        lpd_full = log_predictive_density(model, held, draws=cfg.num_samples, seed=cfg.seed)
    cmp = compare_lpd(lpd, lpd_full)
    write_json(out / LPD_FILE, lpd.tolist())
    metrics.update(test_lpd=cmp.pruned, test_lpd_mean=cmp.pruned_mean, test_lpd_full=cmp.full,
                   test_lpd_full_mean=cmp.full_mean, test_lpd_diff=cmp.difference,
                   test_lpd_diff_se=cmp.se, test_lpd_n=cmp.n)
    stage("posterior draws for ArviZ")
    settings = {"method": cfg.method, "criterion": criterion, "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
                "kl_scale": cfg.kl_scale, "lr": cfg.lr, "batch_size": cfg.batch_size,
                "data": cfg.data, "compression": metrics["compression"]}
    # PSIS-LOO estimates the predictive density of new data from the training data: it
    # belongs on the training set (on test data it answers no question); its Pareto k say
    # where the importance weights cannot be trusted
    idata = pa.to_inference_data(model, data=subset(train_t, cfg.eval_examples, cfg.seed),
                                 num_samples=cfg.num_samples, seed=cfg.seed,
                                 progress=progress, settings=settings)
    pa.save(idata, out / IDATA_FILE)
    stage("PSIS-LOO")
    elpd = pa.loo(idata)
    metrics.update(elpd_loo=elpd.elpd, elpd_loo_se=elpd.se, p_loo=elpd.p,
                   pareto_k_max=elpd.pareto_k_max, pareto_k_bad=elpd.pareto_k_bad, loo_n=elpd.n)

    curves: dict[str, list[dict[str, Any]]] = {}
    if cfg.curve_points > 0:
        stage("accuracy-vs-compression curve")
        from pyro_prune.inference.distributed import single_process

        with single_process():  # rank 0 alone fine-tunes the curves' copies
            curves = accuracy_curves(model, train, test, [criterion or "bmrs_n"],
                                     points=cfg.curve_points, batch_size=cfg.batch_size, lr=cfg.lr,
                                     seed=cfg.seed, progress=progress, num_data=num_data)
        write_json(out / CURVE_FILE, curves)
    return metrics, idata, curves, lpd
