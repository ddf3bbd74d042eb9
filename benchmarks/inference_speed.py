"""Inference latency of pruned networks: unpruned vs masked vs physically converted.

A network pruned by masking (what the papers' released code does: the dense network runs
and removed structures are multiplied by zero; here ``model.predict``) is no faster than the
unpruned one. :func:`pyro_prune.convert.to_deterministic` slices the removed structures
out. This script measures, at batch 1 and 256 with ``torch.set_num_threads(2)``, the median
latency of

* ``unpruned``: the deterministic network with every structure kept (E[theta] folded in),
* ``masked``: ``model.predict`` of the pruned Pyro model (dense compute with masks; each
  gate computes ``E[theta] * kept`` on every call, as the papers' released code does),
* ``masked_static``: the same dense compute with every gate replaced by a fixed scale
  (``E[theta] * kept`` precomputed), i.e. masking without the per-call overhead,
* ``converted``: ``to_deterministic(model)``, sliced exactly,
* ``converted_x8``: ``to_deterministic(model, channel_multiple=8)``: widths rounded up to a
  multiple of 8 by keeping some removed structures as zeros (oneDNN's convolutions are much
  faster on such widths),
* ``unpruned_ofi``, ``converted_ofi``, ``converted_x8_ofi``: the same modules through
  ``torch.jit.optimize_for_inference(torch.jit.script(m))`` (frozen; oneDNN convolutions
  with prepacked weights, convolution + ReLU fused), the CPU deployment path; their
  speed-up is taken against ``unpruned_ofi``,
* conv nets only, ``unpruned_cl`` and ``converted_cl``: the same two modules with
  ``channels_last=True`` (convolution weights in channels-last layout, inputs unchanged);
  their speed-up is taken against the faster of ``unpruned`` and ``unpruned_cl``,

Both deterministic variants (``unpruned``, ``converted``) fold eval-mode BatchNorm into the
preceding convolution (``fold_batchnorm=True``), as deployment does; ``count_macs`` counts
BatchNorm as 0 either way. Parameter counts follow ``count_params(model)`` (BatchNorm
unfolded, as in ``compression``).

Models: the MLP (7 x 100) and LeNet-5 trained on MNIST with ``fit`` +
``ContinuousPruning("bmrs_n")`` (BMRS_N, Wright et al. NeurIPS 2024), and two ResNets (one
BasicBlock per stage; CIFAR ResNet-20 widths 16-32-64 and ResNet-18 widths 64-128-256) with
a random ~50% pruning pattern (no CIFAR-10 here, and training them on two CPU cores is too
slow). Next to each speed-up it reports the MAC reduction (``count_macs``); the goal is a
converted speed-up of at least 0.7x the MAC reduction at batch 256. The timing runs in
``--runs`` fresh processes (default 3) and the medians are reported: on a shared machine
the spread between processes exceeds the spread within one.

Usage::

    python benchmarks/inference_speed.py                # trains (cached under runs/), times 3x
    python benchmarks/inference_speed.py --quick        # tiny smoke run, nothing written
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    format_table,
    median_of_runs,
    median_time,
    print_header,
    rows_of_fresh_processes,
    set_threads,
    write_results,
)

from pyro_prune.convert import (  # noqa: E402
    ChannelScale,
    compression,
    count_macs,
    count_params,
    to_deterministic,
)
from pyro_prune.inference import ContinuousPruning, evaluate, fit, prune_to_compression  # noqa: E402
from pyro_prune.models import MLP, LeNet5, PrunableNet, ResNet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-mlp", type=int, default=5, help="BMRS_N training epochs of the MLP")
    p.add_argument("--epochs-lenet", type=int, default=3, help="BMRS_N training epochs of LeNet-5")
    p.add_argument("--finetune", type=int, default=1, help="fine-tuning epochs after pruning")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of fit")
    p.add_argument("--target-compression", type=float, default=0.5,
                   help="if threshold-free BMRS_N removed less than this in the few epochs, "
                        "remove the lowest-dF structures (BMRS_N ranking) up to it and "
                        "fine-tune one epoch (recorded in the results)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--kl-scale", default="paper", help="fit's kl_scale ('paper', 'elbo' or a number)")
    p.add_argument("--resnet-fraction", type=float, default=0.5,
                   help="fraction of each ResNet gate's structures removed at random")
    p.add_argument("--resnet-widths", nargs="+", default=["16-32-64", "64-128-256"],
                   help="stage widths of the ResNets timed (CIFAR ResNet-20 widths, ResNet-18 widths)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for timing")
    p.add_argument("--train-threads", type=int, default=1,
                   help="torch threads for training (1 is steadier on a shared machine)")
    p.add_argument("--repeats", type=int, default=31, help="timing repeats (the median is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=str(ROOT / "runs" / "inference_speed"),
                   help="trained models are cached here (delete to retrain)")
    p.add_argument("--quick", action="store_true",
                   help="tiny data and models, few repeats; prints only (for smoke tests)")
    p.add_argument("--runs", type=int, default=3,
                   help="time in this many fresh processes and report the medians (run-to-run "
                        "spread on a shared machine exceeds the spread within one run)")
    p.add_argument("--run-output", default=None, help=argparse.SUPPRESS)  # one run's rows (internal)
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs must be >= 1, got {args.runs}")
    return args


def load_mnist(quick: bool, seed: int) -> tuple[TensorDataset, TensorDataset]:
    if quick:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(512, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (512,), generator=gen)
        return TensorDataset(x, y), TensorDataset(x[:128], y[:128])
    from pyro_prune.data import load_dataset

    return load_dataset("mnist", "train"), load_dataset("mnist", "test")


def train_bmrs(name: str, model: PrunableNet, train: TensorDataset, epochs: int,
               args: argparse.Namespace) -> tuple[PrunableNet, dict[str, Any]]:
    """fit + ContinuousPruning('bmrs_n'), cached by name and settings."""
    kl: Any = args.kl_scale
    try:
        kl = float(kl)
    except ValueError:
        pass
    key = (f"{name}_e{epochs}_f{args.finetune}_lr{args.lr:g}_kl{kl}_b{args.batch_size}"
           f"_t{args.target_compression:g}_s{args.seed}.pt")
    path = Path(args.cache_dir) / key
    if path.exists() and not args.quick:
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        info = dict(state["info"], cached=True)
        print(f"{name}: loaded trained model from {path.name}", file=sys.stderr)
        return model.eval(), info
    t0 = time.perf_counter()
    set_threads(args.train_threads)
    schedule = ContinuousPruning("bmrs_n", every=1, finetune_epochs=args.finetune)
    result = fit(model, train, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                 schedule=schedule, kl_scale=kl, seed=args.seed, progress=True)
    info: dict[str, Any] = {
        "epochs": epochs, "finetune_epochs": args.finetune, "lr": args.lr, "kl_scale": kl,
        "batch_size": args.batch_size, "criterion": "bmrs_n (threshold-free, after every epoch)",
        "kept_threshold_free": result.last.get("kept"),
        "compression_threshold_free": compression(model),
        "compression_history": [r["compression"] for r in result.history],
    }
    if info["compression_threshold_free"] < args.target_compression:
        reached = prune_to_compression(model, "bmrs_n", args.target_compression)
        fit(model, train, epochs=1, batch_size=args.batch_size, lr=args.lr, kl_scale=kl,
            seed=args.seed, progress=True)
        info.update(ranked_to=args.target_compression, compression_ranked=reached,
                    ranked_note="lowest-dF structures (BMRS_N ranking) removed up to the target, "
                                "then one fine-tuning epoch")
    info["train_time_s"] = time.perf_counter() - t0
    set_threads(args.threads)
    if not args.quick:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "info": info}, path)
    return model.eval(), info


def random_resnet(args: argparse.Namespace, widths: tuple[int, ...]) -> tuple[PrunableNet, dict[str, Any]]:
    """A ResNet with random BatchNorm statistics and a random pattern of removed structures."""
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if args.quick:
        widths = tuple(max(4, w // 2) for w in widths)
    model = ResNet(3, 10, widths=widths, blocks_per_stage=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
        for g in model.noise_layers().values():
            g.loc.uniform_(-2.0, 0.0, generator=gen)
            g.prune(torch.rand(g.num_structures, generator=gen) < args.resnet_fraction)
    return model.eval(), {"pattern": f"random, fraction {args.resnet_fraction} per gate", "trained": False}


def dense_reference(model: PrunableNet, channels_last: bool = False) -> torch.nn.Module:
    """The unpruned deterministic network: every structure kept, E[theta] folded."""
    return to_deterministic(_unpruned_copy(model), fold_batchnorm=True, channels_last=channels_last)


def _unpruned_copy(model: PrunableNet) -> PrunableNet:
    full = copy.deepcopy(model)
    for g in full.gates().values():
        g.kept.fill_(True)
    return full


def optimized_for_inference(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.jit.optimize_for_inference(torch.jit.script(module))``: frozen, CPU kernels chosen."""
    return torch.jit.optimize_for_inference(torch.jit.script(copy.deepcopy(module).eval()))


def masked_static(model: PrunableNet) -> torch.nn.Module:
    """The pruned backbone, dense, with each gate replaced by a fixed ``E[theta] * kept`` scale."""
    net = copy.deepcopy(model.net).eval()
    with torch.no_grad():
        for name, gate in list(model.gates().items()):
            scale = gate.expected_theta() if hasattr(gate, "expected_theta") else gate.kept.float()
            ndim = 2 if gate.dim == -1 else 4  # Linear features or conv channels
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent) if parent else net, child,
                    ChannelScale(scale, gate.dim, ndim))
    return net


def load_avg() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def time_variants(variants: dict[str, Any], x: torch.Tensor, repeats: int,
                  min_seconds: float = 0.01) -> dict[str, list[float]]:
    """Seconds per call of every variant, measured round-robin.

    Other jobs share the machine and their load comes in bursts, so the variants are
    interleaved (the order rotates every round): a burst slows every variant alike instead
    of one. Each measurement averages enough calls to last about ``min_seconds``.
    """
    names = list(variants)
    number = {}
    with torch.no_grad():
        for name in names:  # warm up and calibrate the calls per measurement
            per_call = median_time(lambda f=variants[name]: f(x), repeats=3, warmup=2)
            number[name] = max(1, int(min_seconds / max(per_call, 1e-7)))
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn, k = variants[name], number[name]
                t0 = time.perf_counter()
                for _ in range(k):
                    fn(x)
                times[name].append((time.perf_counter() - t0) / k)
    return times


def bench(name: str, model: PrunableNet, input_shape: tuple[int, ...], args: argparse.Namespace,
          test: TensorDataset | None, info: dict[str, Any]) -> list[dict[str, Any]]:
    dense = dense_reference(model)
    converted = to_deterministic(model, fold_batchnorm=True)
    converted_x8 = to_deterministic(model, fold_batchnorm=True, channel_multiple=8)
    static = masked_static(model)
    variants = {"unpruned": dense, "masked": model.predict, "masked_static": static,
                "converted": converted, "converted_x8": converted_x8}
    macs = {"unpruned": count_macs(dense, input_shape), "converted": count_macs(converted, input_shape),
            "converted_x8": count_macs(converted_x8, input_shape)}
    macs["masked"] = macs["masked_static"] = macs["unpruned"]  # masking computes everything
    params = {"unpruned": count_params(_unpruned_copy(model)), "converted": count_params(model),
              "converted_x8": count_params(to_deterministic(model, channel_multiple=8))}
    params["masked"] = params["masked_static"] = params["unpruned"]
    # TorchScript frozen and optimised for inference (oneDNN convolutions with prepacked
    # weights, fused conv + ReLU): the CPU deployment path, timed against its own unpruned form
    for v in ("unpruned", "converted", "converted_x8"):
        variants[f"{v}_ofi"] = optimized_for_inference(variants[v])
        macs[f"{v}_ofi"], params[f"{v}_ofi"] = macs[v], params[v]
    if any(isinstance(m, torch.nn.Conv2d) for m in converted.modules()):
        variants["unpruned_cl"] = dense_reference(model, channels_last=True)
        variants["converted_cl"] = to_deterministic(model, fold_batchnorm=True, channels_last=True)
        for v in ("unpruned", "converted"):
            macs[f"{v}_cl"], params[f"{v}_cl"] = macs[v], params[v]
    x_check = torch.randn(4, *input_shape)
    with torch.no_grad():  # every variant of the pruned model computes the same function
        torch.testing.assert_close(static(x_check), model.predict(x_check), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(converted(x_check), model.predict(x_check), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(converted_x8(x_check), model.predict(x_check), rtol=1e-4, atol=1e-5)
        for v in ("converted_ofi", "converted_x8_ofi"):
            torch.testing.assert_close(variants[v](x_check), model.predict(x_check), rtol=1e-4, atol=1e-5)
        if "converted_cl" in variants:
            torch.testing.assert_close(variants["converted_cl"](x_check), model.predict(x_check),
                                       rtol=1e-4, atol=1e-5)
    accuracy: dict[str, float] = {}
    if test is not None:
        accuracy["masked"] = evaluate(model, test)["accuracy"]
        x_t, y_t = test.tensors
        with torch.no_grad():
            pred = torch.cat([converted(x_t[i:i + 2048]) for i in range(0, len(x_t), 2048)]).argmax(-1)
        accuracy["converted"] = float((pred == y_t).float().mean())
    rows = []
    gen = torch.Generator().manual_seed(args.seed)
    for batch in (1, 256):
        x = torch.randn(batch, *input_shape, generator=gen)
        load_before = load_avg()
        times = time_variants(variants, x, args.repeats)
        loads = [load_before, load_avg()]
        latency = {v: statistics.median(t) for v, t in times.items()}
        for variant in variants:
            base = latency["unpruned"]
            if variant.endswith("_cl"):  # against the faster dense layout
                base = min(base, latency["unpruned_cl"])
            elif variant.endswith("_ofi"):  # against the unpruned network deployed alike
                base = latency["unpruned_ofi"]
            speedup = base / latency[variant]
            mac_ratio = macs["unpruned"] / macs[variant]
            rows.append({
                "model": name, "batch": batch, "variant": variant,
                "latency_ms": 1e3 * latency[variant], "latency_min_ms": 1e3 * min(times[variant]),
                "latency_iqr_ms": [1e3 * q for q in statistics.quantiles(times[variant], n=4)[::2]],
                "speedup": speedup,
                "mac_ratio": mac_ratio, "speedup_per_mac_ratio": speedup / mac_ratio,
                "macs": macs[variant], "params": params[variant],
                "compression": compression(model) if not variant.startswith("unpruned") else 0.0,
                "test_accuracy": accuracy.get(variant, accuracy.get("masked")) if not variant.startswith("unpruned") else None,
                "load_avg_1min": max(loads),  # before / after this batch size's timing
                "kept": model.kept_counts() if not variant.startswith("unpruned") else None,
                "training": info,
            })
    return rows


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train (or load) the models and time every variant once, in this process."""
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    print(f"load average (1, 5, 15 min) at start: {os.getloadavg()}")
    train, test = load_mnist(args.quick, args.seed)
    rows: list[dict[str, Any]] = []
    hidden = [16] * 7 if args.quick else [100] * 7
    mlp, info = train_bmrs("mlp7x100", MLP(784, hidden, 10), train, 1 if args.quick else args.epochs_mlp, args)
    rows += bench("MLP 7x100 (BMRS_N, MNIST)", mlp, (1, 28, 28), args, test, info)
    lenet, info = train_bmrs("lenet5", LeNet5(1, 10, 28), train, 1 if args.quick else args.epochs_lenet, args)
    rows += bench("LeNet-5 (BMRS_N, MNIST)", lenet, (1, 28, 28), args, test, info)
    for spec in args.resnet_widths:
        widths = tuple(int(w) for w in spec.split("-"))
        resnet, info = random_resnet(args, widths)
        rows += bench(f"ResNet {spec} (random {100 * args.resnet_fraction:g}%)", resnet, (3, 32, 32),
                      args, None, info)
    print(f"load average (1, 5, 15 min) at end: {os.getloadavg()}")
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.run_output is not None:  # one run, for the parent process
        Path(args.run_output).write_text(json.dumps(measure(args)))
        return
    set_threads(args.threads)
    config = {k: v for k, v in vars(args).items() if k not in ("cache_dir", "run_output")}
    config["timing"] = ("median over repeats of a torch.no_grad forward; variants measured round-robin "
                        "(rotating order) so load bursts hit all alike; each measurement averages "
                        "enough calls to last >= 10 ms; with --runs N the whole timing runs in N fresh "
                        "processes and the medians of their figures are reported")
    print_header(__file__, seeds=[args.seed], config=config)
    if args.runs == 1:
        rows = measure(args)
    else:  # models trained once (cached), timed in fresh processes
        rows = median_of_runs(rows_of_fresh_processes(__file__, argv, args.runs),
                              ("model", "batch", "variant"),
                              ("latency_ms", "latency_min_ms", "speedup", "speedup_per_mac_ratio",
                               "load_avg_1min"))
    columns = ["model", "batch", "variant", "latency_ms", "speedup", "mac_ratio",
               "speedup_per_mac_ratio", "params", "compression", "test_accuracy", "load_avg_1min"]
    print(format_table(rows, columns))
    goal = [r for r in rows if r["variant"].startswith("converted") and r["batch"] == 256]
    for r in goal:
        status = "meets" if r["speedup_per_mac_ratio"] >= 0.7 else "misses"
        spread = r.get("speedup_per_mac_ratio_runs")
        print(f"{r['model']}: {r['variant']} speed-up {r['speedup']:.2f}x vs MAC reduction "
              f"{r['mac_ratio']:.2f}x at batch 256 -> {r['speedup_per_mac_ratio']:.2f} ({status} the 0.7 goal)"
              + (f"; runs {[round(v, 2) for v in spread]}" if spread else ""))
    if not args.quick:
        path = write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                             extra={"load_avg_end": list(os.getloadavg())})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
