"""Build the result pages of the documentation from ``benchmarks/results/*.json``.

Every number of the results pages (``docs/results/*.md``) comes from a committed JSON file
written by a benchmark script. Each script has a *section* here (:data:`SECTIONS`: JSON name
-> renderer of its Markdown) and each section a page (:func:`page_of`: by
:data:`PAGE_OF`, else by the name's prefix, else ``docs/results/other.md``). This script
renders the sections of every page and replaces the text between the page's
``<!-- results:begin -->`` and ``<!-- results:end -->`` markers; the prose above the markers
is written by hand and quotes the tables (a page that does not exist yet is created).

    python benchmarks/make_tables.py           # rewrite the pages whose generated part changed
    python benchmarks/make_tables.py --check   # exit 1 if a page is out of date

Figures are written by the benchmarks beside their JSON; a section links them as
``benchmarks/results/<name>.png`` and this script makes the link relative to the page (the
site serves that folder, see ``docs/_hooks.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
FIGURES = "benchmarks/results/"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-2) else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine(d: dict[str, Any]) -> str:
    m, v = d.get("machine", {}), d.get("versions", {})
    return (f"{m.get('cpu_count', '?')}-core CPU, {m.get('torch_threads', '?')} torch thread(s), "
            f"torch {v.get('torch', '?')}, pyro {v.get('pyro', '?')}, seeds {d.get('seeds')}")


def _reproduce(d: dict[str, Any]) -> str:
    return f"Reproduce: `python benchmarks/{d.get('command', Path(d['script']).name)}` ({_machine(d)})."


def _pm(mean: float, std: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ------------------------------------------------------------------------------ sections
def bmrs_table(d: dict[str, Any], title: str = "BMRS: continuous pruning (Table 1 protocol)") -> str:
    rows = []
    for r in d["rows"]:
        paper = (f"{r['paper_compression_%']:.1f} / {r['paper_accuracy_%']:.2f}"
                 if r.get("paper_compression_%") is not None else "")
        change = r.get("accuracy_change_vs_none")
        rows.append([r["dataset"], r["model"], r["kl_scale"], r["method"], r["seeds"],
                     _pm(r["compression_%"], r["compression_std"]),
                     _pm(r["accuracy_%"], r["accuracy_std"], 2),
                     "" if change is None else f"{change:+.2f}", paper])
    head = ["data", "model", "KL weight", "method", "seeds", "compression %", "test accuracy %",
            "vs none", "paper BMRS_N comp / acc"]
    return "\n\n".join([
        f"### {title}",
        f"Protocol of this run: {d['config'].get('protocol', '')}.",
        _table(head, rows),
        _reproduce(d),
    ])


def bmrs_curves(d: dict[str, Any]) -> str:
    """Figures 2-4 of the BMRS paper: curves as ``accuracy (compression)`` per criterion."""
    parts = ["### BMRS: post-training pruning curves, rank correlation, BMRS_U vs p1",
             f"Protocol of this run: {d['config'].get('protocol', '')}. Each cell: test accuracy % "
             "(compression %) after removing that fraction of the structures, ranked by the "
             "criterion once on the trained model, and one fine-tuning epoch. Threshold-free stops: "
             "the compression at which each rule stops (every structure with dF >= 0 removed). "
             "Spearman correlations are over all structures, most of which sit at the prior."]
    rows = d["rows"]
    for info in d.get("datasets", []):
        ds, model = info["dataset"], info["model"]
        mine = [r for r in rows if r["dataset"] == ds and r["model"] == model]
        curve = [r for r in mine if r["figure"] == "accuracy_vs_compression"]
        crits = list(dict.fromkeys(r["criterion"] for r in curve))
        fractions = sorted({r["fraction"] for r in curve})
        cell = {(r["criterion"], r["fraction"]): r for r in curve}
        table = [[f"{100 * f:.0f}%"] + [f"{100 * cell[(c, f)]['accuracy']:.2f} ({100 * cell[(c, f)]['compression']:.0f})"
                                        if (c, f) in cell else "" for c in crits] for f in fractions]
        stops = {r["criterion"]: r["compression"] for r in mine if r["figure"] == "stop"}
        rho = {(r["a"], r["b"]): r["rho"] for r in mine if r["figure"] == "spearman"}
        names = list(dict.fromkeys([a for a, _ in rho] + [b for _, b in rho]))
        matrix = [[a] + ["1" if a == b else f"{rho.get((a, b), rho.get((b, a), float('nan'))):.2f}"
                         for b in names] for a in names]
        p1 = [[r["p1"], f"{100 * r['compression']:.1f}", f"{100 * r['accuracy']:.2f}"]
              for r in mine if r["figure"] == "bmrs_u_p1"]
        parts += [
            f"**{model} on {ds}** (unpruned: {100 * info['unpruned_accuracy']:.2f}%)",
            _table(["structures removed"] + [c if c != "bmrs_n" else "bmrs_n / bmrs_n_code" for c in crits],
                   table),
            "Threshold-free stops: " + ", ".join(f"{c} {100 * v:.1f}%" for c, v in stops.items())
            + ". Spearman rank correlation of the criteria's scores:",
            _table(["", *names], matrix),
            "BMRS_U with reduced prior LogU[-23 ln 2, -p1 ln 2], threshold-free, one fine-tuning epoch:",
            _table(["p1", "compression %", "test accuracy %"], p1),
            *[f"![{png}](benchmarks/results/{png})" for png in info.get("plots", [])[:1]],
        ]
    parts.append(_reproduce(d))
    return "\n\n".join(parts)


def training_speed(d: dict[str, Any]) -> str:
    runs = d["config"].get("runs", 1)
    rows = [[r["model"], r.get("adam", "for-loop"), r["variant"], r["ms_per_step"], r["ratio_to_plain"],
             ", ".join(f"{v:.2f}" for v in r.get("ratio_to_plain_runs", [r["ratio_to_plain"]]))]
            for r in d["rows"]]
    config = d["config"]
    clock = ("process CPU time" if config.get("clock") == "cpu" else "wall clock")
    load = config.get("load_average_before")
    load_note = (f" Load average of the machine (1, 5, 15 min) before: {load}, after: "
                 f"{config.get('load_average_after')}, on {d['machine'].get('cpu_count')} cores."
                 if load else "")
    return "\n\n".join([
        "### Training step: SVI on the noise model vs a plain PyTorch step",
        f"Batch 128, {config.get('threads')} thread(s), {clock}, variants timed side by side in "
        f"one process, median over {config.get('repeats')} repeats of {config.get('steps')} steps, "
        f"in {runs} fresh process(es) (medians of their figures); `x plain` is the ratio "
        "to the plain step with the same Adam implementation. `compiled kernel`: the noise "
        "kernel of `pyro_prune.models.noise_kernels_jit` (the default where Numba is installed); "
        "`torch kernel`: the same kernel as torch operations." + load_note,
        _table(["model", "Adam", "variant", "ms / step", "x plain", "x plain per run"], rows),
        _reproduce(d),
    ])


def inference_speed(d: dict[str, Any]) -> str:
    rows = [[r["model"], r["variant"], r["latency_ms"], r["speedup"], r["mac_ratio"],
             r["speedup_per_mac_ratio"], r["compression"]]
            for r in d["rows"] if r["batch"] == 256]
    return "\n\n".join([
        "### Conversion: latency at batch 256",
        "`masked` is the dense network with zeroed structures (what masking-only code runs); "
        "`converted` is `to_deterministic(model)`, `converted_x8` rounds widths up to "
        "multiples of 8; `*_ofi` are the same modules through "
        "`torch.jit.optimize_for_inference(torch.jit.script(m))` (speed-up against "
        "`unpruned_ofi`); `*_cl` store convolution weights channels-last (`channels_last=True`; "
        "speed-up against the faster unpruned layout). Goal: speed-up at least 0.7x the MAC "
        f"reduction. Medians of {d['config'].get('runs', 1)} runs, each in a fresh process "
        "(speed-ups taken within a run, variants timed side by side).",
        _table(["model", "variant", "ms", "speed-up", "MAC reduction", "speed-up / MAC red.",
                "compression"], rows),
        _reproduce(d),
    ])


def hf_bert_mnist(d: dict[str, Any], title: str = "BERT on MNIST rows: BMRS_U on the library's defaults") -> str:
    s, c = d["summary"], d["config"]
    layers = [[r["layer"], f"{r['heads']} ({r['heads_before']})", f"{r['ffn']} ({r['ffn_before']})"]
              for r in d["rows"]]
    summary = [
        ["test accuracy", f"{100 * s['test_accuracy_before']:.2f}%", f"{100 * s['test_accuracy_after']:.2f}%"],
        ["parameters (converted network)", f"{s['params_before']:,}", f"{s['params_after']:,}"],
        ["MACs per image", f"{s['macs_before']:,}", f"{s['macs_after']:,}"],
    ]
    heads = [[r["layer"], r["head"], round(r["dF"], 3), r["removed"], round(r["E_theta"], 3),
              round(r["log_scale"], 2), f"{100 * r['ablation_accuracy_cost']:.2f}"] for r in d.get("heads", [])]
    ffn = [[name.split("gates.")[-1], v["dF_min"], v["dF_max"], round(v["log_scale_median"], 2)]
           for name, v in s.get("ffn", {}).items()]
    return "\n\n".join([
        f"### {title}",
        f"{c['train']:,} training images, {c['epochs']} epochs ({s['steps']:,} steps of `fit`'s default "
        f"batch 128), every other setting `fit`'s default: Adam lr 1e-3, `noise_lr` 0.03, `kl_scale` "
        f"`\"auto\"` = `\"paper\"` = num_data / structures = {c['train']:,} / {s['num_structures']} = "
        f"{s['kl_scale']:.1f}; criterion {c['criterion'].upper()} (remove where dF >= 0); test set: the "
        f"10,000 MNIST test images. Converted network vs the pruned Pyro model: largest logit "
        f"difference {s['max_abs_diff_converted_vs_predict']:.1e}; reloaded vs converted "
        f"{s['max_abs_diff_reloaded']:.1e}; training {s['train_seconds']:.0f} s.",
        _table(["layer", "heads (before)", "FFN neurons (before)"], layers),
        _table(["", "before", "after"], summary),
        "Every head: its dF, whether BMRS_U removes it, its posterior (`E[theta]`, `log sigma`), and "
        "the test accuracy (points) lost when that head alone is removed from the unpruned model:",
        _table(["layer", "head", "dF", "removed", "E[theta]", "log sigma", "accuracy cost (points)"], heads),
        "FFN gates: the range of dF over their neurons and the median `log sigma`:",
        _table(["gate", "dF min", "dF max", "median log sigma"], ffn),
        _reproduce(d),
    ])


def transformer_speed(d: dict[str, Any]) -> str:
    inf = [[r["network"], round(r["plain_as_written_ms"], 1), round(r["converted_full_ms"], 1),
            round(r["converted_pruned_ms"], 1),
            round(r["speedup"], 2), round(r["mac_reduction"], 2), round(r["speedup_over_mac_reduction"], 2)]
           for r in d["rows"] if r["measure"] == "inference"]
    tr = [[r["network"], round(r["plain_step_ms"], 1), round(r["bayesianized_step_ms"], 1), round(r["step_ratio"], 2)]
          for r in d["rows"] if r["measure"] == "training"]
    c = d["config"]
    return "\n\n".join([
        "### Transformer speed: converted inference and the SVI step",
        f"Batch {c['batch']} x sequence {c['seq']} of token ids; hidden 128, 2 layers, 4 heads, FFN 512; "
        f"{100 * c['fraction']:.0f}% of the heads and FFN neurons removed. Milliseconds are medians of "
        f"{c['repeats']} timings taken in turn (every variant sees the same load). Goals: speed-up of "
        "the pruned conversion over the unpruned one at least 0.7x the MAC reduction; SVI step at most "
        "1.5x the plain step.",
        _table(["network", "as written (ms)", "converted (ms)", "converted, pruned (ms)", "speed-up",
                "MAC reduction", "speed-up / MAC red."], inf),
        _table(["network", "plain step (ms)", "SVI step (ms)", "x plain"], tr),
        _reproduce(d),
    ])


def reduction_speed(d: dict[str, Any]) -> str:
    rows = [[r["operator"], r["what"], r["structures_per_s"]] for r in d["rows"]]
    return "\n\n".join([
        "### dF operators: throughput",
        _table(["operator", "what", "structures / s"], rows),
        _reproduce(d),
    ])


def _gate_free(method: str) -> str:
    """The paper's name of a method label ("Bayes Magnitude (minibatch BF)" -> "Bayes Magnitude")."""
    return method.removesuffix(" (minibatch BF)")


def bayes_factor_table(d: dict[str, Any],
                       title: str = "Bayes-factor pruning (Table 1 protocol of Mathew & Rowe)") -> str:
    methods: list[str] = []
    cells: dict[tuple[str, str, float], dict[str, dict[str, Any]]] = {}
    for r in d["rows"]:
        if r["method"] not in methods:
            methods.append(r["method"])
        cells.setdefault((r["dataset"], r["model"], r["sparsity"]), {})[r["method"]] = r
    # one paper column per method of the paper; a minibatch-gate row compares with its Bayes one
    plain = list(dict.fromkeys(_gate_free(m) for m in methods))
    rows = []
    for (dataset, model, sparsity), by in cells.items():
        row: list[Any] = [dataset, model, f"{100 * sparsity:g}%"]
        for m in methods:
            r = by.get(m)
            row.append("" if r is None else
                       f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} ({r['reached']})")
        paper = {_gate_free(m): by[m]["paper_accuracy"] for m in methods if m in by}
        row.append(" / ".join("-" if paper.get(m) is None else f"{100 * paper[m]:.2f}"
                              for m in plain)
                   if any(p is not None for p in paper.values()) else "")
        rows.append(row)
    return "\n\n".join([
        f"### {title}",
        "Test accuracy % (mean ± std over seeds) and, in brackets, the seeds whose network "
        "reached the target sparsity (a Bayes run whose gate never opens stays dense). "
        "Reductions of this run: " + "; ".join(d["config"].get("reductions", [])) + ".",
        _table(["data", "model", "target sparsity", *methods, "paper: " + " / ".join(plain)], rows),
        _reproduce(d),
    ])


def w2_fashion_mnist(d: dict[str, Any]) -> str:
    rows = [[r["score"], r["hidden_kept"], r["pruned_%"], r["acc_bma_%"], r["nll_bma"],
             r["w2_test_rel"], r.get("spearman_vs_bmr")] for r in d["rows"]]
    lottery = [[r["arm"], r["hidden"], r["acc_final_%"], r["acc_bma_%"]] for r in d.get("lottery", [])]
    parts = [
        "### W2 neuron pruning of a Bayesian MLP, Fashion-MNIST",
        "Reductions: " + "; ".join(d["config"].get("reductions", [])) + ".",
        _table(["neuron score", "hidden kept", "neurons pruned %", "test accuracy % (BMA)",
                "test NLL", "W2 shift / W2 to empty", "Spearman vs Gaussian BMR dF"], rows),
        "![cost curve](benchmarks/results/w2_fashion_mnist_cost.png)",
    ]
    if lottery:
        parts += ["Lottery ticket: the pruned architecture retrained from the original "
                  "initialisation vs a fresh one.",
                  _table(["arm", "hidden", "final accuracy %", "accuracy % (BMA)"], lottery)]
    parts.append(_reproduce(d))
    return "\n\n".join(parts)


def w2_uci(d: dict[str, Any]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in d["rows"]:
        groups.setdefault((r["dataset"], r["score"]), []).append(r)
    rows = []
    for (dataset, score), rs in groups.items():
        rows.append([dataset, score, len(rs), statistics.mean(r["pruned_%"] for r in rs),
                     statistics.mean(r["rmse_full"] for r in rs),
                     statistics.mean(r["rmse_pruned"] for r in rs),
                     ", ".join(f"{r['rmse_change_%']:+.1f}" for r in rs),
                     statistics.mean(r["ll_full"] for r in rs),
                     statistics.mean(r["ll_pruned"] for r in rs),
                     statistics.mean(r["spearman_vs_bmr"] for r in rs)])
    parts = [
        "### W2 neuron pruning of Bayesian MLPs, UCI regression",
        "Reductions: " + "; ".join(d["config"].get("reductions", [])) + ". Default lambda = "
        f"{d['config'].get('lam')}.",
        _table(["data", "neuron score", "splits", "neurons pruned %", "RMSE full", "RMSE pruned",
                "RMSE change % per split", "test LL full", "test LL pruned",
                "Spearman vs BMR dF"], rows),
    ]
    sweep = d.get("lambda_sweep") or {}
    if sweep:
        names = list(sweep)
        lams = [p["lam"] for p in sweep[names[0]]]
        lam_rows = []
        for i, lam in enumerate(lams):
            lam_rows.append([lam] + [f"{100 * sweep[n][i]['prune_ratio']:.0f}% / "
                                     f"{sweep[n][i]['rmse_change_%']:+.1f}%" for n in names])
        score = d["config"].get("sweep_score", "contribution")
        parts += [f"Prune ratio / RMSE change against lambda (split 0, {score} score):",
                  _table(["lambda", *names], lam_rows),
                  "![lambda sweep](benchmarks/results/w2_uci_lambda.png)"]
    parts.append(_reproduce(d))
    return "\n\n".join(parts)


def w2_search_time(d: dict[str, Any]) -> str:
    rows = [[r["hidden"], r["neurons"], r["steps"], r["search_s"], r["s_per_step"], r["pruned_%"]]
            for r in d["rows"]]
    return "\n\n".join([
        "### W2 search time against network size (Fashion-MNIST BNN MLPs)",
        f"{d['config'].get('search')}; {d['machine'].get('torch_threads')} threads.",
        _table(["hidden", "neurons", "steps", "search s", "s / step", "neurons pruned %"], rows),
        _reproduce(d),
    ])


def w2_depth_width(d: dict[str, Any]) -> str:
    rows = [[r["sweep"], r["value"], r["hidden"], r["kept"], r["pruned_%"], r["rmse_change_%"]]
            for r in d["rows"]]
    return "\n\n".join([
        "### W2 pruning vs depth and width",
        f"Data: {d['config'].get('dataset')}, split {d['config'].get('split')}; "
        "reductions: " + "; ".join(d["config"].get("reductions", [])) + ".",
        _table(["sweep", "value", "hidden", "kept", "neurons pruned %", "RMSE change %"], rows),
        "![depth and width](benchmarks/results/w2_depth_width.png)",
        _reproduce(d),
    ])


def bayes_factor_gate(d: dict[str, Any], title: str = "Bayes-factor gate: how many examples its "
                                                      "likelihood may see") -> str:
    c = d["config"]
    epochs = int(c.get("epochs", 0))
    shown = set(range(1, epochs + 1)) if epochs <= 6 else {1, 2, 5, 10, 15, 20, 25, epochs}
    be = [[r["dataset"], r["epoch"], f"{r['break_even_median']:.0f}",
           f"{r['break_even_min']:.0f}-{r['break_even_max']:.0f}"]
          for r in d.get("break_even", []) if r["epoch"] in shown]
    rows = [[r["dataset"], r["B"], r["opened"], r["first_accepted_epoch"],
             f"{100 * r['sparsity']:.0f}%", f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f}",
             f"{r['first_log_bf_median']:.1f}"] for r in d["rows"]]
    return "\n\n".join([
        f"### {title}",
        f"Bayes Magnitude, {c.get('model', '').upper()} at {100 * c.get('sparsity', 0):g}% sparsity, "
        "beta = 1. Break-even B* (`BayesFactor.break_even_examples`) of the full-data gate's "
        "decision after each epoch (median and range over seeds): a gate whose likelihood sees "
        "B examples accepts in expectation iff B <= B*. Reductions: "
        + "; ".join(c.get("reductions", [])) + ".",
        _table(["data", "epoch", "B* (median)", "B* (range)"], be),
        "The gate on B fresh training examples per decision (`likelihood=\"batch\", "
        "likelihood_batch=B`; `full`: all of them):",
        _table(["data", "B", "gate opened (seeds)", "first accepted epoch", "sparsity",
                "test accuracy %", "log BF at epoch 1 (median)"], rows),
        *[f"![break-even](benchmarks/results/{png})" for png in d.get("plots", [])],
        _reproduce(d),
    ])


def distributed_speed(d: dict[str, Any]) -> str:
    c = d["config"]
    rows = [[r["processes"], r["backend"], r["device"], r["examples_per_s"], r["comm_ms_per_step"],
             r["speedup"], ", ".join(f"{v:.2f}" for v in r.get("speedup_runs", [r["speedup"]]))]
            for r in d["rows"]]
    load = (f" The machine was shared with other jobs: load average {c['load']:.0f} before and "
            f"{c['load_after']:.0f} after the measurement." if c.get("load") is not None
            and c.get("load_after") is not None else "")
    return "\n\n".join([
        "### Data-parallel training: 1 and N processes (torchrun)",
        f"`fit` on {c['model']} with {c['train_examples']} {c['data']} examples, global batch "
        f"{c['batch_size']}, {c['threads']} thread(s) per process, no pruning; examples per second "
        f"of the epochs after the first, medians of {c['runs']} runs (speed-ups taken within a "
        f"run); `all-reduce ms / step`: rank 0's wait in the one gradient all-reduce per step."
        + load,
        _table(["processes", "backend", "device", "examples / s", "all-reduce ms / step",
                "speed-up", "speed-up per run"], rows),
        _reproduce(d),
    ])


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def laplace_gate(d: dict[str, Any], title: str = "The Bayes-factor gate on Laplace evidence") -> str:
    """The Bayes-factor gate on Laplace evidence beside Magnitude, the point ratio and the paper."""
    rows = []
    for r in d["rows"]:
        sp = r.get("bayes-magnitude_sparsity")
        rows.append([
            r["dataset"], r["model"], f"{100 * r['sparsity']:g}%", r.get("variant", "laplace"),
            ", ".join(str(e) for e in r["accepted_epochs"]) or "never", _pct(r["laplace_sparsity"]),
            _pct(r["laplace_accuracy"]), _pct(r.get("magnitude_accuracy")),
            "-" if sp is None else f"{_pct(r.get('bayes-magnitude_accuracy'))} (sp {_pct(sp)})",
            _pct(r.get("paper_magnitude")), _pct(r.get("paper_bayes_magnitude")),
            f"{r['first_log_bf']:.0f} = {r['first_delta_log_likelihood']:.0f} + {r['first_delta_log_occam']:.0f}",
        ])
    header = ["data", "net", "target", "gate", "accepted (epoch)", "sparsity %", "acc %", "Magnitude acc %",
              "Bayes Magnitude (point ratio) acc % (sparsity)", "paper Magnitude", "paper Bayes Magnitude",
              "first log BF = d log-lik + d log Occam"]
    c = d["config"]
    return "\n".join([
        f"### {title}",
        "",
        f"Magnitude candidates after every epoch, accepted when the Laplace evidence does not fall "
        f"(`laplace`: at the training prior N(0, 1); `laplace-fit`: each model's evidence maximised over "
        f"the prior scale). Reduced protocol: {'; '.join(c['reductions'])}. The Magnitude and point-ratio "
        f"columns are `bayes_factor_table.py`'s (mean of seeds 0-2, same protocol unless the reductions say otherwise); the paper's are its "
        f"Table 1 (25 epochs, full data). Accuracies: test set, %.",
        "",
        _table(header, rows),
        "",
        _reproduce(d),
    ])


def laplace_posthoc(d: dict[str, Any]) -> str:
    """Post-hoc Laplace BMR on trained networks beside Torch-Pruning's criteria at the same widths."""
    def cell(r: dict[str, Any], key: str) -> str:
        lo, hi = r[f"{key}_min"], r[f"{key}_max"]
        return f"{100 * r[key]:.2f} ({100 * lo:.2f}-{100 * hi:.2f})" if len(r["seeds"]) > 1 else f"{100 * r[key]:.2f}"

    rows = [[r["model"], r["dataset"], r["method"], len(r["seeds"]), cell(r, "compression"),
             cell(r, "test_accuracy")] for r in d["rows"]]
    paired = []  # per seed: Laplace BMR minus each Torch-Pruning criterion, same network and widths
    runs = d.get("runs", [])
    by_key = {(r["model"], r["dataset"], r["seed"], r["method"]): r for r in runs}
    for (model, dataset, seed, method), r in sorted(by_key.items()):
        if method != "laplace-bmr-kron":
            continue
        diffs = []
        for tp in ("tp-l1", "tp-l2", "tp-taylor"):
            other = by_key.get((model, dataset, seed, tp))
            diffs.append("-" if other is None else f"{100 * (r['test_accuracy'] - other['test_accuracy']):+.2f}")
        base = by_key.get((model, dataset, seed, "unpruned"))
        paired.append([model, dataset, seed, f"{100 * r['compression']:.1f}",
                       "-" if base is None else f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}", *diffs])
    c = d["config"]
    nets = "; ".join(f"`{k}`: {v}" for k, v in c["networks"].items() if k in c["models"])
    return "\n".join([
        "### Post-hoc Laplace BMR on trained networks, beside Torch-Pruning",
        "",
        f"{nets}. Trained {c['epochs']} epochs: {c['protocol']}; prior N(0, {c['train_prior_scale']}^2) in "
        f"training; Laplace curvature (Kronecker-factored GGN) from {c['curvature_subset']} training examples, "
        f"prior scale fitted by the evidence. `laplace-bmr-kron`: removal where dF >= 0, kept weights moved "
        f"to the reduced posterior mean; `laplace-bmr-kron-nomean`: the same removals, kept weights at w*. "
        f"`tp-*`: Torch-Pruning's `MagnitudeImportance` (L1, L2) and `TaylorImportance` "
        f"({c['taylor_examples']} training examples) with its `MetaPruner`, removing as many structures per "
        f"layer as Laplace BMR. Median over seeds (range), %.",
        "",
        _table(["net", "data", "method", "seeds", "compression %", "test acc %"], rows),
        "",
        "Per seed, test-accuracy differences in points (same network, same widths):",
        "",
        _table(["net", "data", "seed", "compression %", "BMR - unpruned", "BMR - TP L1", "BMR - TP L2",
                "BMR - TP Taylor"], paired),
        "",
        _reproduce(d),
    ])


def laplace_evidence_speed(d: dict[str, Any]) -> str:
    """Time and memory of log_evidence against network size."""
    rows = [[r["width"], r["params"], r["hessian"], f"{r['time_s']:.2f}", _fmt(r.get("time_vs_diag")),
             f"{r['peak_extra_mb']:.0f}"] for r in d["rows"]]
    c = d["config"]
    return "\n".join([
        "### Time and memory of `log_evidence`",
        "",
        f"{c['network']}, {c['examples']} examples, median of {c['repeats']} calls in a fresh process per row; "
        "memory: peak resident set added by the calls.",
        "",
        _table(["width", "parameters", "hessian", "time s", "time / diag", "peak extra MB"], rows),
        "",
        _reproduce(d),
    ])


def language_model_steps(d: dict[str, Any]) -> str:
    """The tiny GPT-2 language model: what continuous pruning removes against the Adam steps."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in d["rows"]:
        other = ", ".join(f"{k} {v:g}" for k, v in r.get("options", {}).items()) or "-"
        groups.setdefault((r["epochs"], r["lr"], r["batch_size"], other), []).append(r)
    rows = []
    for (epochs, lr, batch, other), rs in groups.items():
        rows.append([epochs, lr, batch, other, rs[0]["optimizer_steps"],
                     " / ".join(str(r["heads_removed"]) for r in rs),
                     " / ".join(str(r["mlp_removed"]) for r in rs),
                     f"{100 * statistics.mean(r['compression'] for r in rs):.1f}",
                     f"{100 * min(r['test_accuracy'] for r in rs):.1f}",
                     statistics.median(r["test_loss"] for r in rs),
                     statistics.median(r["widest_sigma_kept"] for r in rs)])
    c = d["config"]
    return "\n\n".join([
        "### Language model: continuous pruning against the optimizer steps",
        f"The tiny GPT-2 of the language-model section ({c['train']} training and {c['test']} test counting "
        f"sequences of {c['length']} tokens, the first {c['ignored_prompt']} next tokens ignored), "
        "`fit(model, train, epochs=E, lr=..., batch_size=..., schedule=ContinuousPruning())`, every "
        "other setting the default (`noise_lr` 0.03, `kl_scale` \"auto\", 10 fine-tuning epochs) unless "
        "named under other. Steps: "
        "Adam steps of the whole run, fine-tuning included. Per seed: heads removed of 4, MLP units "
        "removed of 64; compression: the mean share of the 68 structures removed; accuracy: the "
        "lowest per-token test accuracy over the seeds; loss: the median test loss per sequence; "
        "sigma: the median over the seeds of the widest noise posterior kept (its prior's: 5.77).",
        _table(["epochs", "lr", "batch", "other", "steps", "heads removed", "MLP units removed", "compression %",
                "accuracy %", "test loss", "widest sigma"], rows),
        _reproduce(d),
    ])


def pruning_steps_small_data(d: dict[str, Any]) -> str:
    """Continuous pruning on small UCI sets against the multiple of the steps the noise needs."""
    rows = [[r["dataset"], f"{r['multiple']:g}x", r["seeds"], r["epochs"], r["pruning_steps"],
             f"{r['compression_%']:.1f}", f"{r['compression_min_%']:.1f}", f"{r['test_rmse']:.4f}"]
            for r in d["summary"]]
    c = d["config"]
    return "\n\n".join([
        "### Small data sets: the pruning steps",
        f"The command line's run on a UCI set: {c['network']}, {int(100 * c['val_fraction'])}% of the "
        f"training split held out for validation, Adam lr {c['lr']}, batch {c['batch_size']}, "
        f"`ContinuousPruning(finetune_epochs={c['finetune_epochs']})`, every other setting the default "
        f"(`noise_lr` {c['noise_lr']}, `kl_scale` \"auto\": the ELBO's weight for regression). The "
        "pruning epochs give a multiple of the optimizer steps the noise posteriors need to widen to "
        "their prior (`pruning_steps_needed`: 267); `pyro-prune fit` without `--epochs` takes 3x "
        "(`PRUNING_STEPS_MARGIN`). Compression: mean and lowest over the seeds; test RMSE: mean, "
        "normalised targets.",
        _table(["data", "steps", "seeds", "epochs", "pruning steps", "compression %", "lowest %",
                "test RMSE"], rows),
        _reproduce(d),
    ])


def autoguide_criteria(d: dict[str, Any]) -> str:
    """Continuous pruning under Pyro's Gaussian autoguides: the criteria side by side."""
    rows = [[r["weights"], r["guide"], r["criterion"] + (" (default)" if r["default"] else ""), r["epochs"],
             r["seeds"], f"{r['compression_%']:.1f} ± {r['compression_std']:.1f}",
             f"{r['accuracy_%']:.2f} ± {r['accuracy_std']:.2f}"] for r in d["summary"]]
    c = d["config"]
    return "\n\n".join([
        "### Criteria under Pyro's autoguides (digits)",
        f"{c['network']} on the digits, Adam lr {c['lr']}, batch {c['batch_size']}, `ContinuousPruning(criterion)` "
        f"(10 fine-tuning epochs), `kl_scale` \"{c['kl_scale']}\", `noise_lr` {c['noise_lr']} (the guide's "
        f"parameters too), each autoguide started by `{c['guide_start']}`; \"builtin\" is the network's own "
        "guide. Mean ± standard deviation over the seeds; epochs are the training epochs, before the "
        "fine-tuning.",
        _table(["weights", "guide", "criterion", "epochs", "seeds", "compression %", "test accuracy %"], rows),
        _reproduce(d),
    ])


def regression_defaults(d: dict[str, Any]) -> str:
    """Continuous pruning of UCI regression networks at the KL weights "paper" and "elbo"."""
    rows = [[r["dataset"], r["kl_scale"] + (" (default)" if r["kl_scale"] == "elbo" else ""), r["splits"],
             f"{r['compression_%']:.1f}", f"{r['rmse_unpruned']:.3g}", f"{r['rmse']:.3g}",
             f"{r['rmse_ratio']:.2f}", f"{r['log_lik_unpruned']:.2f}", f"{r['log_lik']:.2f}",
             f"{r['log_lik_difference']:+.2f}"] for r in d["summary"]]
    c = d["config"]
    return "\n\n".join([
        "### Regression on the UCI sets: the KL weight of the defaults",
        f"{c['network']}, Gaussian likelihood with learned noise, on the standard splits (the split "
        f"index is the training seed); Adam lr {c['lr']}, batch {c['batch_size']}, about {c['steps']} "
        "optimizer steps of training, then `ContinuousPruning()`'s 10 fine-tuning epochs at the ELBO's "
        "weight; every other setting the default. Each pruning run against the unpruned network of the "
        "same split trained at the ELBO's weight: compression (parameters removed), test RMSE in the "
        "target's units and its ratio to the unpruned network's (mean of the per-split ratios), test "
        "log likelihood per example (nats, target's units) and its difference.",
        _table(["data", "KL weight while pruning", "splits", "compression %", "RMSE unpruned", "RMSE",
                "RMSE ratio", "log lik unpruned", "log lik", "difference"], rows),
        _reproduce(d),
    ])


def noise_estimator(d: dict[str, Any]) -> str:
    """The fast ELBO's two noise estimators side by side on a Table-1 configuration."""
    rows = [[r["dataset"], r["model"], r["kl_scale"], r["method"],
             "one per example" if r["noise_draws"] == "per_example" else "one per step", r["seeds"],
             _pm(r["compression_%"], r["compression_std"]), _pm(r["accuracy_%"], r["accuracy_std"], 2)]
            for r in d["rows"]]
    per_seed: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in d.get("runs", []):
        key = (r["dataset"], r["model"], r["kl_scale"], r["method"])
        per_seed.setdefault(key, {}).setdefault(r["noise_draws"], {})[r["seed"]] = 100 * r["test_accuracy"]
    paired = []
    for (dataset, model, kl, method), by in per_seed.items():
        seeds = sorted(set(by.get("per_example", {})) & set(by.get("per_step", {})))
        diffs = [by["per_step"][s] - by["per_example"][s] for s in seeds]
        if diffs:
            paired.append([dataset, model, kl, method, len(diffs), ", ".join(f"{v:+.2f}" for v in diffs),
                           statistics.mean(diffs)])
    parts = [
        "### The fast ELBO's noise estimators side by side (Table-1 configurations)",
        f"{d['config'].get('protocol', '')}; `fit(per_example_noise=True)` (one draw of the noise "
        "per example, the default) against `per_example_noise=False` (one draw per step, the "
        "cheaper step); mean ± standard deviation over seeds, compression in %, test accuracy in %.",
        _table(["data", "model", "KL weight", "criterion", "noise draws", "seeds", "compression %",
                "accuracy %"], rows),
    ]
    if paired:
        parts += ["Paired by seed (same split and initialisation): accuracy of one draw per step "
                  "minus one draw per example, in points.",
                  _table(["data", "model", "KL weight", "criterion", "seeds", "per seed", "mean"], paired)]
    parts.append(_reproduce(d))
    return "\n\n".join(parts)


SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "bmrs_table": bmrs_table,
    "bmrs_table_full": lambda d: bmrs_table(
        d, "BMRS: continuous pruning with the paper's 50 + 10 epochs (MLPs)"),
    "bmrs_table_full_lenet": lambda d: bmrs_table(
        d, "BMRS: continuous pruning with the paper's 50 + 10 epochs (LeNet-5)"),
    "bmrs_curves": bmrs_curves,
    "bmrs_table_estimator_mlp": noise_estimator,
    "bmrs_table_estimator_lenet": noise_estimator,
    "training_speed": training_speed,
    "hf_bert_mnist": hf_bert_mnist,
    "hf_bert_mnist_short": lambda d: hf_bert_mnist(d, "The same with fewer steps"),
    "transformer_speed": transformer_speed,
    "inference_speed": inference_speed,
    "reduction_speed": reduction_speed,
    "distributed_speed": distributed_speed,
    "bayes_factor_table": bayes_factor_table,
    "bayes_factor_table_cnn": lambda d: bayes_factor_table(
        d, "Bayes-factor pruning: CNN, reduced protocol, first and output layers unpruned"),
    "bayes_factor_table_full": lambda d: bayes_factor_table(
        d, "Bayes-factor pruning: the paper's epochs and full training set, FCN, 25-99% sparsity"),
    "bayes_factor_table_full_cnn": lambda d: bayes_factor_table(
        d, "Bayes-factor pruning: the paper's epochs and full training set, MNIST CNN at 99%, "
           "first and output layers unpruned"),
    "bayes_factor_gate": bayes_factor_gate,
    "bayes_factor_gate_full": lambda d: bayes_factor_gate(
        d, "Bayes-factor gate with the paper's epochs and full training set"),
    "w2_fashion_mnist": w2_fashion_mnist,
    "w2_uci": w2_uci,
    "w2_depth_width": w2_depth_width,
    "w2_search_time": w2_search_time,
    "laplace_gate": laplace_gate,
    "laplace_gate_cnn": lambda d: laplace_gate(d, "The Bayes-factor gate on Laplace evidence: CNN"),
    "laplace_posthoc": laplace_posthoc,
    "laplace_evidence_speed": laplace_evidence_speed,
    "language_model_steps": language_model_steps,
    "regression_defaults": regression_defaults,
    "pruning_steps_small_data": pruning_steps_small_data,
    "autoguide_criteria": autoguide_criteria,
}


#: the page of a section, where its name's prefix does not say it (see :func:`page_of`)
PAGE_OF: dict[str, str] = {
    "hf_bert_mnist": "transformers.md",
    "hf_bert_mnist_short": "transformers.md",
    "transformer_speed": "transformers.md",
    "language_model_steps": "transformers.md",
    "regression_defaults": "results/bmrs.md",
    "pruning_steps_small_data": "results/bmrs.md",
    "autoguide_criteria": "guides_and_reports.md",
    "training_speed": "results/speed.md",
    "bmrs_table_estimator_mlp": "results/speed.md",
    "bmrs_table_estimator_lenet": "results/speed.md",
    "inference_speed": "results/speed.md",
    "reduction_speed": "results/speed.md",
}

#: page of a section by the prefix of its name, first match wins
PAGE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("bmrs", "results/bmrs.md"),
    ("bayes_factor", "results/bayes_factor.md"),
    ("laplace", "results/bayes_factor.md"),
    ("w2", "results/w2.md"),
)

OTHER_PAGE = "results/other.md"


def page_of(name: str) -> str:
    """The page (relative to ``docs/``) that shows section ``name``."""
    if name in PAGE_OF:
        return PAGE_OF[name]
    for prefix, page in PAGE_PREFIXES:
        if name.startswith(prefix):
            return page
    if name.endswith("_speed"):
        return "results/speed.md"
    return OTHER_PAGE


def pages() -> dict[str, list[str]]:
    """Page -> the names of its sections whose JSON exists, in :data:`SECTIONS` order."""
    out: dict[str, list[str]] = {}
    for name in SECTIONS:
        if (RESULTS / f"{name}.json").exists():
            out.setdefault(page_of(name), []).append(name)
    return out


#: pages whose generated sections sit inside one of the page's own sections: their headings
#: keep their level
NESTED_PAGES = frozenset({"guides_and_reports.md"})


def _for_page(markdown: str, page: str) -> str:
    """A section's Markdown as it reads on ``page``: its headings one level up (each page
    has one title; not on :data:`NESTED_PAGES`), its figure links relative to the page (the
    site serves ``benchmarks/results/`` at its root)."""
    up = os.path.relpath(DOCS, (DOCS / page).parent).replace(os.sep, "/")
    lines = []
    for line in markdown.split("\n"):
        if line.startswith("### ") and page not in NESTED_PAGES:
            line = line[1:]
        lines.append(line.replace(f"]({FIGURES}", f"]({up}/{FIGURES}"))
    return "\n".join(lines)


def render(page: str) -> str:
    """The generated Markdown of ``page``: every section of it whose JSON exists."""
    parts = []
    for name in pages().get(page, []):
        d = _load(name)
        if d is not None:
            parts.append(_for_page(SECTIONS[name](d), page))
    return "\n\n".join(parts)


def _splice(text: str, body: str, where: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``body``."""
    if begin not in text or end not in text:
        raise SystemExit(f"{where} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def updated_page(text: str, page: str) -> str:
    """``text`` (the page's Markdown) with its generated part rendered anew."""
    return _splice(text, render(page), f"docs/{page}")


def _new_page(page: str) -> str:
    title = Path(page).stem.replace("_", " ").capitalize()
    return (f"# Results: {title}\n\nGenerated from `benchmarks/results/*.json` by "
            f"`python benchmarks/make_tables.py`.\n\n{BEGIN}\n{END}\n")


# ------------------------------------------------------------------------------ docs/defaults.md
DEFAULTS_PAGE = ROOT / "docs" / "defaults.md"
DEFAULTS_BEGIN, DEFAULTS_END = "<!-- defaults:begin -->", "<!-- defaults:end -->"
#: the Table-1 configurations, in the order of the page
_CONFIGS = [("mnist", "mlp"), ("fashion-mnist", "mlp"), ("mnist", "lenet5"), ("fashion-mnist", "lenet5")]
#: bmrs_table.py's name of the default criterion's computation: BMRS_N + 0.5 log 2pi
_DEFAULT_IN_TABLE = "bmrs_n_code"


def _runs(d: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list(d.get("runs", [])) if d else []


def kl_curve_points() -> list[dict[str, Any]]:
    """Compression and accuracy of the default criterion against the KL weight (seed 0).

    The ends come from ``bmrs_table.json`` ("elbo") and from the default's own run of
    ``bmrs_defaults_init.json`` ("paper" = "auto", init_loc 0; else ``bmrs_table.json``'s run
    of the default criterion at "paper", with the weight of ``bmrs_defaults_recipe.json``), the
    middle from ``bmrs_defaults_kl.json``; the reference is the unpruned network with the ELBO's weight.
    """
    table = _runs(_load("bmrs_table"))
    points = []
    for dataset, model in (("mnist", "mlp"), ("mnist", "lenet5"), ("fashion-mnist", "lenet5")):
        ref = [r for r in table if (r["dataset"], r["model"], r["seed"], r["method"], r["kl_scale"])
               == (dataset, model, 0, "none", "elbo")]
        ends = [r for r in table if (r["dataset"], r["model"], r["seed"], r["method"], r["kl_scale"])
                == (dataset, model, 0, _DEFAULT_IN_TABLE, "elbo")]
        ours = [r for r in _runs(_load("bmrs_defaults_kl")) + _runs(_load("bmrs_defaults_init"))
                if r.get("finetune_kl", "train") == "train"]  # the whole run at one weight
        middle = [r for r in ours if (r["dataset"], r["model"], r["seed"], r["method"], r["init_loc"])
                  == (dataset, model, 0, "bmrs", 0.0)]
        if not middle or not ref:
            continue
        auto = [r["kl_value"] for r in ours + _runs(_load("bmrs_defaults_recipe"))
                if (r["dataset"], r["model"], r["kl_scale"]) == (dataset, model, "auto")]
        if auto and not any(r["kl_scale"] == "auto" for r in middle):  # bmrs_table.py's run of the default
            middle += [{**r, "kl_scale": "auto", "kl_value": auto[0]} for r in table
                       if (r["dataset"], r["model"], r["seed"], r["method"], r["kl_scale"])
                       == (dataset, model, 0, _DEFAULT_IN_TABLE, "paper")]
        for r in ends:
            points.append({"dataset": dataset, "model": model, "kl_scale": "elbo", "kl_value": 1.0,
                           "compression": r["compression"], "accuracy": r["test_accuracy"],
                           "unpruned_elbo_accuracy": ref[0]["test_accuracy"]})
        for r in middle:
            kl_name = str(r["kl_scale"])
            points.append({"dataset": dataset, "model": model,
                           "kl_scale": "auto = paper (default)" if kl_name == "auto" else kl_name,
                           "kl_value": r["kl_value"], "compression": r["compression"],
                           "accuracy": r["test_accuracy"], "unpruned_elbo_accuracy": ref[0]["test_accuracy"]})
    points.sort(key=lambda p: (p["dataset"], p["model"], p["kl_value"]))
    return points


def _summary(d: dict[str, Any] | None, dataset: str, model: str, kl: str, method: str) -> dict[str, Any] | None:
    for r in (d or {}).get("rows", []):
        if (r["dataset"], r["model"], r["kl_scale"], r["method"]) == (dataset, model, kl, method):
            return r
    return None


def defaults_tables() -> str:
    """The generated part of ``docs/defaults.md``: the default recipe, criteria, init, KL weight."""
    table, init = _load("bmrs_table"), _load("bmrs_defaults_init")
    crit, kl = _load("bmrs_defaults_criteria"), _load("bmrs_defaults_kl")
    recipe, paths = _load("bmrs_defaults_recipe"), _load("bmrs_defaults_paths")
    parts = []
    if table is not None:
        parts += _default_recipe_table(table, recipe)
        methods = ["none", "e_theta", "snr", "bmrs_n", _DEFAULT_IN_TABLE, "bmrs_u8", "bmrs_u4"]
        for kl_name in ("paper", "elbo"):
            rows = []
            for dataset, model in _CONFIGS:
                cells = []
                for m in methods:
                    r = _summary(table, dataset, model, kl_name, m)
                    cells.append("-" if r is None else f"{r['compression_%']:.1f} / {r['accuracy_%']:.2f}")
                rows.append([dataset, model, *cells])
            head = ["data", "model", *[("bmrs (= bmrs_n_code)" if m == _DEFAULT_IN_TABLE else m) for m in methods]]
            parts += [f"### Criteria side by side, KL weight \"{kl_name}\" (compression % / test accuracy %, 3 seeds)",
                      "Every epoch at this weight, fine-tuning included (`bmrs_table.py`).",
                      _table(head, rows)]
    extra = list((crit or {}).get("rows", []))
    if extra:
        rows = [[r["dataset"], r["model"], r["method"], r["kl_scale"], r.get("finetune_kl", "train"), r["seeds"],
                 f"{r['compression_%']:.1f} ± {r['compression_std']:.1f}",
                 f"{r['accuracy_%']:.2f} ± {r['accuracy_std']:.2f}"] for r in extra]
        parts += ["### The new reduced priors and joint BMR (mean ± std over seeds)",
                  "`none_gaussian`: the unpruned network with Gaussian weights; `bmrs_gaussian`: the "
                  "default criterion (the noise alone) on that network; `bmrs_joint`: the joint BMR "
                  "of each structure's noise and incoming weights on it. Fine-tuning at the ELBO's "
                  "weight (`elbo`, the default) or at the training weight (`train`). The KL weight `auto` "
                  "weights the noise's KL by the paper's weight and the Gaussian weights' by 1; a "
                  "number weights every KL term.",
                  _table(["data", "model", "criterion", "KL weight", "fine-tuning KL weight", "seeds",
                          "compression %", "test accuracy %"], rows),
                  _reproduce(crit or init)]
    if init is not None:
        rows = []
        table_runs = _runs(table)
        for dataset, model in _CONFIGS:
            for method, finetune in itertools.product(
                    ("bmrs", "none", "bmrs_ref0", "none_ref0", "bmrs_n_ref0", "bmrs_u8_ref0",
                     "bmrs_u_off_ref0"), ("elbo", "train")):
                found: dict[float, list[dict[str, Any]]] = {}
                for x in _runs(init) + _runs(crit):
                    if ((x["dataset"], x["model"], x["method"], x.get("finetune_kl", "train"))
                            == (dataset, model, method, finetune)):
                        found.setdefault(x["init_loc"], []).append(x)
                if not found or set(found) == {0.0}:
                    continue
                if 0.0 not in found and finetune == "elbo":  # the default recipe's runs, same seeds
                    seeds = {x["seed"] for xs in found.values() for x in xs}
                    found[0.0] = [x for x in _runs(recipe) if (x["dataset"], x["model"], x["method"],
                                  x["init_loc"], x["seed"]) in {(dataset, model, method, 0.0, s) for s in seeds}]
                    if not found[0.0]:
                        del found[0.0]
                if 0.0 not in found and finetune == "train":  # bmrs_table.py's run of the same recipe
                    # (where theta_ref = 1 whatever reference_loc says)
                    base = method.removesuffix("_ref0")
                    name = _DEFAULT_IN_TABLE if base == "bmrs" else base
                    seeds = {x["seed"] for xs in found.values() for x in xs}
                    same = [x for x in table_runs if (x["dataset"], x["model"], x["method"], x["kl_scale"])
                            == (dataset, model, name, "paper") and x["seed"] in seeds]
                    if same:
                        found[0.0] = same
                comps, cells = _init_cells(found)
                label = method if method.startswith("none") else \
                    f"{method}, fine-tuned at the {'ELBO' if finetune == 'elbo' else 'training'} weight"
                rows.append([dataset, model, label, *cells,
                             f"{max(comps.values()) - min(comps.values()):.1f}" if len(comps) > 1 else "-"])
        parts += ["### Init sweep: compression % / test accuracy % against `init_loc` "
                  "(mean over seeds, their number in brackets)",
                  "`<criterion>_ref0`: the same with `reference_loc=0` (the noise multiplies by "
                  "`theta` itself, so a start below 0 also shrinks the initial signal: the "
                  "behaviour before the signal reference).",
                  _table(["data", "model", "criterion", "init_loc 0", "init_loc -2", "init_loc -4",
                          "spread (points)"], rows),
                  "Fine-tuning removes nothing, so the compression of a start does not depend on "
                  "the fine-tuning weight (`elbo`: the default; `train`: the training weight); "
                  "the accuracy does. The `elbo` rows at `init_loc` 0 are the default recipe's runs "
                  "of the same seeds (`--experiment recipe`).",
                  f"Protocol: {init['config'].get('protocol', '')}. " + _reproduce(init)]
    parts += _init_budget_table(init, recipe)
    parts += _one_draw_table(recipe, _load("bmrs_defaults_one_draw"))
    parts += _noise_lr_table(table, _load("bmrs_defaults_noise_lr"))
    parts += _kl_warmup_table(table, _load("bmrs_defaults_noise_lr"), _load("bmrs_defaults_kl_warmup"))
    if paths is not None:
        parts += _paths_tables(paths)
    points = kl_curve_points()
    if points and kl is not None:
        rows = [[p["dataset"], p["model"], p["kl_scale"], p["kl_value"], f"{100 * p['compression']:.1f}",
                 f"{100 * p['accuracy']:.2f}", f"{100 * (p['accuracy'] - p['unpruned_elbo_accuracy']):+.2f}"]
                for p in points]
        parts += ["### The KL weight: compression and accuracy against kl_scale (default criterion, seed 0)",
                  "Every epoch at this weight, fine-tuning included.",
                  _table(["data", "model", "kl_scale", "KL weight", "compression %", "test accuracy %",
                          "vs unpruned (ELBO weight)"], rows),
                  "![compression and accuracy against the KL weight](benchmarks/results/bmrs_defaults_kl.png)",
                  _reproduce(kl)]
    return "\n\n".join(parts)


def _same_seeds(runs: list[dict[str, Any]], dataset: str, model: str, method: str, kl: str,
                seeds: set[int]) -> list[dict[str, Any]]:
    return [r for r in runs if (r["dataset"], r["model"], r["method"], r["kl_scale"]) == (dataset, model, method, kl)
            and r["seed"] in seeds]


def _mean_acc(runs: list[dict[str, Any]]) -> float | None:
    return statistics.mean(100 * r["test_accuracy"] for r in runs) if runs else None


def _one_draw_table(recipe: dict[str, Any] | None, one_draw: dict[str, Any] | None) -> list[str]:
    """The default recipe against the same recipe with one noise draw per step, same seeds."""
    if recipe is None or one_draw is None:
        return []
    rows = []
    paired: list[float] = []
    for dataset, model in _CONFIGS:
        cheap = {r["seed"]: r for r in _runs(one_draw) if (r["dataset"], r["model"]) == (dataset, model)}
        default = {r["seed"]: r for r in _runs(recipe) if (r["dataset"], r["model"], r["method"], r["init_loc"],
                   r.get("finetune_kl")) == (dataset, model, "bmrs", 0.0, "elbo") and r["seed"] in cheap}
        seeds = sorted(default)
        if not seeds:
            continue
        cells = []
        for runs in (default, cheap):
            cells += [_pm(*_mean_std([100 * runs[k]["compression"] for k in seeds])),
                      _pm(*_mean_std([100 * runs[k]["test_accuracy"] for k in seeds]), 2)]
        diff = [100 * (cheap[k]["test_accuracy"] - default[k]["test_accuracy"]) for k in seeds]
        paired += diff
        rows.append([dataset, model, len(seeds), *cells, f"{statistics.mean(diff):+.2f}"])
    if not rows:
        return []
    lower, higher = sum(d < 0 for d in paired), sum(d > 0 for d in paired)
    n = lower + higher  # ties carry no sign
    p_value = sum(math.comb(n, k) for k in range(max(lower, higher), n + 1)) / 2 ** n if n else 1.0
    return ["### The default recipe with one noise draw per step (mean ± std over the same seeds)",
            "`fit(per_example_noise=False)`: one draw of the noise per training step, shared by the "
            "batch, the cheaper step of the speed table, against the default's one draw per "
            "example (`--experiment recipe`); everything else the default recipe.",
            _table(["data", "model", "seeds", "compression %: per example (default)",
                    "test accuracy %: per example", "compression %: per step",
                    "test accuracy %: per step", "accuracy difference, paired (points)"], rows),
            f"Over all {len(paired)} runs paired by seed, one draw per step is less accurate in {lower}, more "
            f"accurate in {higher} and equal in {len(paired) - n}; a sign test (ties left out) gives a one-sided "
            f"p = {p_value:.3f} for a difference this one-sided or more under no difference.",
            _reproduce(one_draw)]


#: the default noise learning rate (``pyro_prune.inference.fit.DEFAULT_NOISE_LR``)
DEFAULT_NOISE_LR = 0.03
#: the method name of the default recipe at another noise learning rate (``bmrs_defaults.py``)
_NOISE_LR_PREFIX = "bmrs_noise_lr"


def _noise_lr_runs(noise_lr: dict[str, Any] | None, dataset: str, model: str) -> dict[float, dict[int, dict[str, Any]]]:
    """Per noise learning rate, per seed, the default recipe's run on one configuration."""
    found: dict[float, dict[int, dict[str, Any]]] = {}
    for r in _runs(noise_lr):
        if (r["dataset"], r["model"], r.get("finetune_kl")) == (dataset, model, "elbo") \
                and r["method"].startswith(_NOISE_LR_PREFIX):
            found.setdefault(float(r["method"].removeprefix(_NOISE_LR_PREFIX)), {})[r["seed"]] = r
    return found


def _noise_lr_table(table: dict[str, Any] | None, noise_lr: dict[str, Any] | None) -> list[str]:
    """The default recipe against the noise learning rate, with the paired difference to the default."""
    if noise_lr is None:
        return []
    default = float(noise_lr["config"].get("default_noise_lr", DEFAULT_NOISE_LR))
    table_runs, rows = _runs(table), []
    for dataset, model in _CONFIGS:
        found = _noise_lr_runs(noise_lr, dataset, model)
        if set(found) <= {default}:
            continue
        paper = next((r.get("paper_compression_%") for r in (table or {}).get("rows", [])
                      if (r["dataset"], r["model"]) == (dataset, model)
                      and r.get("paper_compression_%") is not None), None)
        for lr in sorted(found):
            by_seed = found[lr]
            seeds = sorted(by_seed)
            ref = _mean_acc(_same_seeds(table_runs, dataset, model, "none", "elbo", set(seeds)))
            acc = [100 * by_seed[k]["test_accuracy"] for k in seeds]
            paired = [k for k in seeds if k in found.get(default, {})]
            diff = ("-" if lr == default or not paired else
                    f"{statistics.mean(100 * (by_seed[k]['test_accuracy'] - found[default][k]['test_accuracy']) for k in paired):+.2f}"
                    f" ({len(paired)})")
            rows.append([dataset, model, f"{lr:g}" + (" (default)" if lr == default else ""),
                         " ".join(str(k) for k in seeds),
                         _pm(*_mean_std([100 * by_seed[k]["compression"] for k in seeds])), paper,
                         _pm(*_mean_std(acc), 2), "-" if ref is None else f"{statistics.mean(acc) - ref:+.2f}",
                         diff])
    if not rows:
        return []
    return ["### The noise learning rate: compression and accuracy against `noise_lr` (mean ± std over seeds)",
            "The default recipe at each learning rate of the noise posteriors (`fit(noise_lr=...)`; "
            "1e-3 = `lr`, no separate rate); the weights keep `lr` = 1e-3. \"vs unpruned (ELBO weight)\": against `bmrs_table.py`'s "
            "unpruned network at the ELBO's weight of the same seeds; \"vs default\": the "
            "difference in test accuracy with the default rate, paired by seed (their number in brackets). "
            "A rate with seed 0 alone was screened on that seed only.",
            _table(["data", "model", "noise_lr", "seeds", "compression %", "paper BMRS_N compression %",
                    "test accuracy %", "vs unpruned (ELBO weight)", "vs default, paired (points)"], rows),
            f"Protocol: {noise_lr['config'].get('protocol', '')}. " + _reproduce(noise_lr)]


def _warmup_name(run: dict[str, Any], default_rate: float) -> str:
    """``W``, with the start and the noise learning rate where they are not the default's."""
    name = str(run["warmup_epochs"])
    if run.get("init_loc"):
        name += f", init_loc {run['init_loc']:g}"
    if run.get("noise_lr") is not None and float(run["noise_lr"]) != default_rate:
        name += f", noise_lr {float(run['noise_lr']):g}"
    return name


def _kl_warmup_table(table: dict[str, Any] | None, noise_lr: dict[str, Any] | None,
                     warmup: dict[str, Any] | None) -> list[str]:
    """The default recipe with the KL weight warmed up, against the default of the same seed."""
    if warmup is None:
        return []
    table_runs, rows = _runs(table), []
    for dataset, model in _CONFIGS:
        mine = sorted((r for r in _runs(warmup) if (r["dataset"], r["model"]) == (dataset, model)),
                      key=lambda r: (r["seed"], r["warmup_epochs"], -r["init_loc"], r.get("noise_lr") or 0))
        if not mine:
            continue
        rate = float((noise_lr or {}).get("config", {}).get("default_noise_lr", DEFAULT_NOISE_LR))
        default = _noise_lr_runs(noise_lr, dataset, model).get(rate, {})
        for seed in sorted({r["seed"] for r in mine}):
            ref = _mean_acc(_same_seeds(table_runs, dataset, model, "none", "elbo", {seed}))
            runs = ([("none (default)", default[seed])] if seed in default else []) + \
                [(_warmup_name(r, rate), r) for r in mine if r["seed"] == seed]
            for name, r in runs:
                rows.append([dataset, model, seed, name, f"{100 * r['compression']:.1f}",
                             f"{100 * r['test_accuracy']:.2f}",
                             "-" if ref is None else f"{100 * r['test_accuracy'] - ref:+.2f}"])
    if not rows:
        return []
    return ["### The KL weight warmed up (default recipe otherwise)",
            "The KL weight of training epoch `e <= W` is `k ** ((e - 1) / W)` for the training weight "
            "`k` (\"auto\" = \"paper\"): the ELBO's weight 1 in the first epoch, then geometric steps "
            "to `k` from epoch `W + 1` on (`ContinuousPruning(kl_warmup_epochs=W)`); pruning after every "
            "epoch and fine-tuning at the ELBO's weight as the default. \"none (default)\" is the "
            "default recipe's run of the same seed (`--experiment noise_lr`, noise_lr 0.03); \"vs "
            "unpruned (ELBO weight)\" as in the tables above.",
            _table(["data", "model", "seed", "warm-up epochs W", "compression %", "test accuracy %",
                    "vs unpruned (ELBO weight)"], rows),
            f"Protocol: {warmup['config'].get('protocol', '')}. " + _reproduce(warmup)]


def _default_recipe_table(table: dict[str, Any], recipe: dict[str, Any] | None) -> list[str]:
    """The default recipe per Table-1 configuration against the same seeds' references."""
    table_runs, rows = _runs(table), []
    for dataset, model in _CONFIGS:
        ours = [r for r in _runs(recipe) if (r["dataset"], r["model"], r["method"], r["init_loc"],
                                             r.get("finetune_kl")) == (dataset, model, "bmrs", 0.0, "elbo")]
        seeds = {r["seed"] for r in ours}
        trained = _same_seeds(table_runs, dataset, model, _DEFAULT_IN_TABLE, "paper", seeds)
        none_t = _same_seeds(table_runs, dataset, model, "none", "paper", seeds)
        none_e = _same_seeds(table_runs, dataset, model, "none", "elbo", seeds)
        paper = next((r.get("paper_compression_%") for r in table.get("rows", [])
                      if (r["dataset"], r["model"]) == (dataset, model)
                      and r.get("paper_compression_%") is not None), None)
        if not ours:
            all_seeds = {r["seed"] for r in _same_seeds(table_runs, dataset, model, _DEFAULT_IN_TABLE, "paper",
                                                        set(range(100)))}
            old = _same_seeds(table_runs, dataset, model, _DEFAULT_IN_TABLE, "paper", all_seeds)
            ref = _same_seeds(table_runs, dataset, model, "none", "elbo", all_seeds)
            rows.append([dataset, model, f"- ({len(old)})", _pm(*_mean_std([100 * r["compression"] for r in old])),
                         paper, "not measured", _fmt(_mean_acc(old), 2),
                         _fmt(_mean_acc(_same_seeds(table_runs, dataset, model, "none", "paper", all_seeds)), 2),
                         _fmt(_mean_acc(ref), 2), "-", "-"])
            continue
        comp = [100 * r["compression"] for r in ours]
        acc = [100 * r["test_accuracy"] for r in ours]
        ref_e = _mean_acc(none_e)
        ref_t = _mean_acc(none_t)
        rows.append([dataset, model, len(ours), _pm(*_mean_std(comp)), paper, _pm(*_mean_std(acc), 2),
                     _fmt(_mean_acc(trained), 2), _fmt(ref_t, 2), _fmt(ref_e, 2),
                     "-" if ref_t is None else f"{statistics.mean(acc) - ref_t:+.2f}",
                     "-" if ref_e is None else f"{statistics.mean(acc) - ref_e:+.2f}"])
    return [
        "### The default on the Table-1 configurations",
        _table(["data", "model", "seeds", "compression %", "paper BMRS_N compression %",
                "test accuracy %: default (fine-tuned at the ELBO weight)",
                "fine-tuned at the training weight", "unpruned, library defaults (training weight)",
                "unpruned, ELBO weight", "default vs unpruned (library defaults)",
                "default vs unpruned (ELBO weight)"], rows),
        "The default is `fit(..., schedule=ContinuousPruning(finetune_epochs=3))`: criterion "
        "`bmrs` (BMRS_N + 0.5 log 2pi), kl_scale \"auto\" = \"paper\" for the training epochs, "
        "the ELBO's weight for the fine-tuning epochs, noise_lr 0.03 (`bmrs_defaults.py "
        "--experiment recipe`). The other accuracy columns are `bmrs_table.py`'s runs of the same "
        "seeds: `bmrs_n_code` at the weight \"paper\" throughout (the same computation as the "
        "default up to the fine-tuning weight), and the unpruned network at either weight: "
        "\"library defaults\" is `fit(model, train, epochs=13)` with nothing else, whose "
        "`kl_scale=\"auto\"` is the training weight \"paper\"; \"ELBO weight\" the same network "
        "fitted untempered (`kl_scale=\"elbo\"`). A "
        "row with \"-\" seeds has no run of the default recipe yet; its columns are "
        "`bmrs_table.py`'s 3 seeds. "
        + (f"Protocol: {recipe['config'].get('protocol', '')}. " + _reproduce(recipe) if recipe else "")
        + " Reference runs: " + _reproduce(table).removeprefix("Reproduce: "),
    ]


def _init_cells(found: dict[float, list[dict[str, Any]]]) -> tuple[dict[float, float], list[str]]:
    """Mean compression per start, and the cells "compression / accuracy (seeds)" at 0, -2, -4."""
    comps = {i: statistics.mean(100 * x["compression"] for x in found[i]) for i in (0.0, -2.0, -4.0) if i in found}
    cells = [f"{comps[i]:.1f} / {statistics.mean(100 * x['test_accuracy'] for x in found[i]):.2f}"
             f" ({len(found[i])})" if i in found else "-" for i in (0.0, -2.0, -4.0)]
    return comps, cells


#: the init sweeps at each epoch budget: (result file, recipe shown, its runs' method); the
#: longer budgets are ``bmrs_defaults.py --suffix`` runs of the same experiment
_INIT_BUDGETS = (
    ("bmrs_defaults_init", "default", "bmrs"),
    ("bmrs_defaults_init_20+3", "default", "bmrs"),
    ("bmrs_defaults_init_50+10", "default", "bmrs"),
    ("bmrs_defaults_kl_warmup", "W = 3", "bmrs_warmup3"),
    ("bmrs_defaults_kl_warmup", "W = 3, noise_lr 0.01", "bmrs_warmup3_noise_lr0.01"),
    ("bmrs_defaults_kl_warmup_50+10", "W = 3", "bmrs_warmup3"),
    ("bmrs_defaults_kl_warmup_50+10", "W = 3, noise_lr 0.01", "bmrs_warmup3_noise_lr0.01"),
)


def _init_budget_table(init: dict[str, Any] | None, recipe: dict[str, Any] | None) -> list[str]:
    """The init sweep of the default, and of the KL warm-up, at each epoch budget: the
    dependence on the start fades with training."""
    rows, sources = [], []
    for name, label, method in _INIT_BUDGETS:
        d = init if name == "bmrs_defaults_init" else _load(name)
        if d is None:
            continue
        budget = f"{d['config']['epochs']} + {d['config']['finetune']}"
        for dataset, model in _CONFIGS:
            found: dict[float, list[dict[str, Any]]] = {}
            for x in _runs(d):
                if ((x["dataset"], x["model"], x["method"], x.get("finetune_kl")) == (dataset, model, method, "elbo")):
                    found.setdefault(x["init_loc"], []).append(x)
            if d is init and 0.0 not in found and found:  # the default recipe's runs: init_loc 0, same budget
                seeds = {x["seed"] for xs in found.values() for x in xs}
                same = [x for x in _runs(recipe) if (x["dataset"], x["model"], x["method"], x["init_loc"],
                        x.get("finetune_kl")) == (dataset, model, "bmrs", 0.0, "elbo") and x["seed"] in seeds]
                if same:
                    found[0.0] = same
            if len(found) < 2:  # no sweep
                continue
            comps, cells = _init_cells(found)
            # the spread over the seeds every start has, seed by seed
            common = set.intersection(*({x["seed"] for x in xs} for xs in found.values()))
            per_seed = []
            for seed in sorted(common):
                c = [100 * x["compression"] for xs in found.values() for x in xs if x["seed"] == seed]
                per_seed.append(max(c) - min(c))
            rows.append([dataset, model, label, budget, *cells,
                         f"{max(comps.values()) - min(comps.values()):.1f}",
                         " / ".join(f"{v:.1f}" for v in per_seed) or "-"])
        if d is not init and _reproduce(d) not in sources:
            sources.append(_reproduce(d))
    if not rows:
        return []
    return [
        "### The init sweep against the epoch budget "
        "(compression % / test accuracy %, mean over seeds, their number in brackets)",
        "The default recipe (fine-tuned at the ELBO's weight), and the same with the KL weight "
        "warmed up over `W` epochs (`ContinuousPruning(kl_warmup_epochs=W)`), from each start; "
        "the spread is that of the means, and per seed (over the seeds every start has).",
        _table(["data", "model", "recipe", "epochs + fine-tuning", "init_loc 0", "init_loc -2", "init_loc -4",
                "spread (points)", "spread per seed"], rows),
        " ".join(sources),
    ]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _paths_tables(paths: dict[str, Any]) -> list[str]:
    """Why the start matters: per epoch, the compression and the kept posteriors' state."""
    rows = []
    for r in sorted(_runs(paths), key=lambda r: (-r["log_high"] + r["init_loc"], -r["init_loc"])):
        last = r["epochs"][-1]
        rows.append([r["init_loc"], r["log_high"], r["log_high"] - r["init_loc"],
                     " / ".join(f"{100 * e['compression']:.1f}" for e in r["epochs"]),
                     f"{last['loss']:.3f}", f"{last['median_log_scale']:.2f}",
                     f"{100 * last['prior_like_share']:.0f}", f"{last['median_multiplier']:.2f}"])
    grads = [[g["loc"], g["log_scale"], f"{g['kl']:.3f}", _fmt(g["dkl_dloc"]), _fmt(g["dkl_dlog_scale"])]
             for g in paths.get("kl_gradients", [])]
    n = len(_runs(paths)[0]["epochs"]) if _runs(paths) else 0
    return [
        f"### Why the start matters: the distance to the top of the prior range (MNIST MLP, seed 0, {n} epochs)",
        "`log_high` is the top `B` of the prior range `[A, B]` (`MultiplicativeNoise(log_high=...)`, "
        "default 0); the posterior starts at `init_loc` with the signal reference there. The last "
        "four columns are at the end of the last epoch, before its pruning decision, over the "
        "structures still kept: the tempered loss per example, the median `log sigma`, the share "
        "with `log sigma > 2` (close to the prior) and the median multiplier `E[theta] / theta_ref`.",
        _table(["init_loc", "log_high", "headroom B - init_loc", "compression % after each epoch",
                "loss", "median log sigma", "prior-like %", "median multiplier"], rows),
        "The KL term of one structure and its gradient at the top of the range and inside it:",
        _table(["loc", "log sigma", "KL", "dKL/dloc", "dKL/dlog sigma"], grads),
        f"Protocol: {paths['config'].get('protocol', '')}. " + _reproduce(paths),
    ]


def updated_defaults_page(text: str) -> str:
    """``docs/defaults.md`` with its generated tables replaced."""
    return _splice(text, defaults_tables(), "docs/defaults.md", DEFAULTS_BEGIN, DEFAULTS_END)


# ------------------------------------------------------------------------------ docs/defaults.md: capacity
CAPACITY_BEGIN, CAPACITY_END = "<!-- capacity:begin -->", "<!-- capacity:end -->"


def _widths_text(widths: list[list[int]]) -> str:
    """Per layer, the width (or the range over seeds), layers separated by ``/``."""
    return " / ".join(str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in
                      ((min(layer), max(layer)) for layer in zip(*widths)))


def capacity_tables() -> str:
    """The generated part of the capacity section of ``docs/defaults.md`` (``capacity_bound.json``)."""
    d = _load("capacity_bound")
    if d is None:
        return "(no results yet: run `python benchmarks/capacity_bound.py`)"
    cfg = d["config"]
    epochs, long_epochs = cfg["epochs"], cfg["long_epochs"]
    show_long = any(r.get("long_epochs") for r in d["rows"])
    rows = []
    for dataset, model in _CONFIGS:
        mine = [r for r in d["rows"] if (r["dataset"], r["model"]) == (dataset, model)]
        if not mine:
            continue
        kept = next((r for r in mine if r["network"] == "kept"), None)
        if kept is not None and kept.get("default_accuracy_%") is not None:
            ref = kept["unpruned_elbo_accuracy_%"]
            rows.append([dataset, model, "**default recipe** (continuous pruning)", _widths_text(kept["widths"]),
                         kept["seeds"], round(kept["params"]), f"{kept['default_compression_%']:.1f}",
                         kept["paper_bmrs_n_compression_%"],
                         f"{kept['default_accuracy_%']:.2f}", f"{kept['default_accuracy_%'] - ref:+.2f}"]
                        + (["-", "-"] if show_long else []))
        for r in sorted(mine, key=lambda r: -r["compression_%"]):
            name = "same architecture, from scratch" if r["network"] == "kept" else r["network"]
            cells = [dataset, model, name, _widths_text(r["widths"]), r["seeds"], round(r["params"]),
                     f"{r['compression_%']:.1f}", r["paper_bmrs_n_compression_%"],
                     _pm(r["accuracy_%"], r["accuracy_std"], 2), _fmt_signed(r.get("vs_unpruned_elbo"))]
            if show_long:
                cells += (["-", "-"] if not r.get("long_epochs") else
                          [_pm(r["long_accuracy_%"], r["long_accuracy_std"], 2)
                           + ("" if r.get("long_seeds", r["seeds"]) == r["seeds"] else
                              f" ({r['long_seeds']} seed{'s' if r['long_seeds'] > 1 else ''})"),
                           _fmt_signed(r.get("long_vs_unpruned_elbo"))])
            rows.append(cells)
    refs = {(r["dataset"], r["model"]): r["unpruned_elbo_accuracy_%"] for r in d["rows"]
            if r.get("unpruned_elbo_accuracy_%") is not None}
    head = ["data", "model", "network", "widths per gated layer", "seeds", "parameters", "compression %",
            "paper BMRS_N compression %", f"test accuracy % after {epochs} epochs",
            "vs unpruned (ELBO weight)"]
    if show_long:
        head += [f"after {long_epochs} epochs", f"vs unpruned, {long_epochs} epochs"]
    return "\n\n".join([
        "### Networks of the pruned size trained from scratch (plain, no noise)",
        _table(head, rows),
        "\"scaled f (all)\": every gated layer at `f` times its width (uniform hidden widths "
        "for the MLPs; channels and neurons together for LeNet-5); \"paper (family)\": the "
        "largest network of the family whose compression is at least the paper's BMRS_N "
        "compression (\"fc\": LeNet-5's two fully connected layers scaled, both convolutions "
        "at full width); \"same architecture, from scratch\": each default run's kept widths "
        "(the widths column gives the range over seeds). \"vs unpruned (ELBO weight)\" is "
        "against our unpruned network of the same seeds (`bmrs_table.py`, kl_scale \"elbo\", "
        f"10 + 3 epochs): {', '.join(f'{ds} {m} {v:.2f}%' for (ds, m), v in refs.items())}. "
        f"Protocol: {cfg.get('protocol', '')}. "
        + (f"Trained {long_epochs} epochs: " + "; ".join(f"{c.replace(':', ' ')} {', '.join(n)}"
                                                        for c, n in cfg.get("long", {}).items())
           + f" (with Adam's constant learning rate, epoch {epochs} of such a run is a {epochs}-epoch run). "
           if show_long else "")
        + _reproduce(d),
    ])


def _fmt_signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def updated_capacity_block(text: str) -> str:
    """``docs/defaults.md`` with its capacity block replaced (unchanged without the block)."""
    if CAPACITY_BEGIN not in text:
        return text
    return _splice(text, capacity_tables(), "docs/defaults.md", CAPACITY_BEGIN, CAPACITY_END)


def sync_file(path: Path, new: str, *, check: bool) -> bool:
    """Whether ``path`` is missing or differs from ``new``; unless ``check``, ``new`` is then
    written there (atomically: a reader sees the old page or the new one). A page whose text
    is unchanged is never written."""
    if path.exists() and path.read_text() == new:
        return False
    if not check:
        from pyro_prune._io import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, new)
    return True


def generated_pages() -> dict[Path, str]:
    """Every page this script writes -> its text with the generated parts rendered anew."""
    out: dict[Path, str] = {}
    if DEFAULTS_PAGE.exists():
        out[DEFAULTS_PAGE] = updated_capacity_block(updated_defaults_page(DEFAULTS_PAGE.read_text()))
    for page in pages():
        path = DOCS / page
        out[path] = updated_page(path.read_text() if path.exists() else _new_page(page), page)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a page is out of date")
    args = parser.parse_args(argv)
    changed, current = [], []
    for path, new in generated_pages().items():
        name = f"docs/{path.relative_to(DOCS).as_posix()}" if path.is_relative_to(DOCS) else str(path)
        (changed if sync_file(path, new, check=args.check) else current).append(name)
    if args.check and changed:
        print(f"result pages out of date ({', '.join(changed)}): run python benchmarks/make_tables.py")
        return 1
    for name in changed:
        print(f"updated {name}")
    if current:
        print(f"already up to date: {', '.join(current)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
