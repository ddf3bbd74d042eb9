"""Time per training step: SVI on the noise model vs a plain PyTorch step.

For the MNIST MLP (7x100) and LeNet5, same batch (128), same threads, side by side in one
process: the plain deterministic network (cross-entropy, Adam), the noise model with the
fast ELBO (``engine="fast"``, the default of ``fit``: the noise of all layers drawn in one
kernel call, one draw per example or, with ``per_example_noise=False``, one per step) with
that kernel compiled (Numba: :mod:`pyro_prune.models.noise_kernels_jit`, the default where
installed) and as torch operations, the same with one torch kernel call per layer, and the
model through Pyro's ``TraceMeanField_ELBO``
(``engine="pyro"``). Median over repeats, interleaved so that machine noise hits every
variant alike. Each variant runs with Adam's ``foreach=True`` implementation and with its
fused kernel (what :func:`pyro_prune.inference.fit` uses where the device has it); ratios
are to the plain step with the same Adam.

The whole timing runs in ``--runs`` fresh processes (default 3) and the medians of their
figures are reported (ratios taken within each run). ``--clock cpu`` times the process's CPU
time instead of the wall clock: on a machine loaded by other jobs, with ``--threads 1``, it
leaves out the time the process waits for a core (with more threads it would count the
threads' spin-waits). The JSON records the machine's load average before and after.

    python benchmarks/training_speed.py [--repeats 15] [--steps 50] [--threads 2] [--runs 3]
                                        [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    format_table,
    median_of_runs,
    parse_benchmark_args,
    print_header,
    rows_of_fresh_processes,
    write_results,
)

from pyro_prune.inference.elbo import NoisePlan, fast_elbo_loss, pyro_elbo_loss
from pyro_prune.models import MLP, LeNet5, noise_kernels_jit

SEED = 0
#: the Adam implementations compared: ``fit`` uses the fused kernel where it exists
ADAMS = {"foreach": {"foreach": True}, "fused": {"fused": True}}


def _plain_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The deterministic network: the backbone without its gates."""
    import copy

    from pyro_prune.models import StructureGate

    plain = copy.deepcopy(net.net)
    for name, module in list(plain.named_children()):
        if isinstance(module, StructureGate):
            setattr(plain, name, torch.nn.Identity())
    return plain


def _step_fns(make, x, y, adam: dict[str, bool]):
    torch.manual_seed(SEED)
    net = make()
    net.num_data = 60000
    plain = _plain_copy(net)
    opt_plain = torch.optim.Adam(plain.parameters(), lr=1e-3, **adam)
    opt_fast = torch.optim.Adam(net.parameters(), lr=1e-3, **adam)
    torch.manual_seed(SEED)
    pyro_net = make()
    pyro_net.num_data = 60000
    opt_pyro = torch.optim.Adam(pyro_net.parameters(), lr=1e-3, **adam)
    net.train()
    pyro_net.train()

    def plain_step():
        opt_plain.zero_grad(set_to_none=True)
        loss = F.cross_entropy(plain(x), y)
        loss.backward()
        opt_plain.step()

    plan = NoisePlan(net)  # resolved once, as fit does

    def fast_step(per_example: bool, fused: bool = True, compiled: bool = True):
        def step():
            old = noise_kernels_jit.set_enabled(compiled)
            try:
                opt_fast.zero_grad(set_to_none=True)
                loss, _ = fast_elbo_loss(net, x, y, per_example=per_example, fused=fused, plan=plan)
                loss.backward()
                opt_fast.step()
            finally:
                noise_kernels_jit.set_enabled(old)

        return step

    def pyro_step():
        opt_pyro.zero_grad(set_to_none=True)
        loss = pyro_elbo_loss(pyro_net, x, y)
        loss.backward()
        opt_pyro.step()

    steps = {"plain torch": plain_step}
    if noise_kernels_jit.available():
        steps["fast ELBO, one draw per step (per_example_noise=False), compiled kernel"] = fast_step(False)
        steps["fast ELBO, one draw per example (default), compiled kernel"] = fast_step(True)
    steps.update({
        "fast ELBO, one draw per step, torch kernel": fast_step(False, compiled=False),
        "fast ELBO, one draw per example, torch kernel": fast_step(True, compiled=False),
        "fast ELBO, per example, one kernel call per layer": fast_step(True, fused=False, compiled=False),
        "Pyro TraceMeanField_ELBO": pyro_step,
    })
    return steps


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every variant of both models side by side in this process."""
    models = {
        "MLP 7x100": (lambda: MLP(784, [100] * 7, 10), (1, 28, 28)),
        "LeNet5": (lambda: LeNet5(1, 10, 28), (1, 28, 28)),
    }
    rows = []
    for model_name, (make, shape) in models.items():
        g = torch.Generator().manual_seed(SEED)
        x = torch.randn(args.batch, *shape, generator=g)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        fns: dict[tuple[str, str], Any] = {}
        for adam, options in ADAMS.items():
            for name, fn in _step_fns(make, x, y, options).items():
                if adam != "foreach" and ("Pyro" in name or "per layer" in name):
                    continue  # the two Adam implementations compared on the main variants only
                fns[(adam, name)] = fn
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
        for fn in fns.values():  # warm-up
            for _ in range(5):
                fn()
        for _ in range(args.repeats):
            for key, fn in fns.items():
                t0 = clock()
                for _ in range(args.steps):
                    fn()
                times[key].append((clock() - t0) / args.steps)
        for (adam, name), ts in times.items():
            med = statistics.median(ts)
            base = statistics.median(times[(adam, "plain torch")])
            rows.append({
                "model": model_name,
                "adam": adam,
                "variant": name,
                "ms_per_step": med * 1e3,
                "ratio_to_plain": med / base,
            })
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time the wall clock or the process's CPU time")
    parser.add_argument("--runs", type=int, default=3,
                        help="time in this many fresh processes and report the medians")
    parser.add_argument("--run-output", default=None, help=argparse.SUPPRESS)  # one run's rows (internal)
    args = parse_benchmark_args(parser, argv, seed=False)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if args.run_output is not None:  # one run, for the parent process
        Path(args.run_output).write_text(json.dumps(measure(args)))
        return
    config: dict[str, Any] = {k: v for k, v in vars(args).items() if k != "run_output"}
    print_header(__file__, seeds=[SEED], config=config)
    load_before = os.getloadavg()
    if args.runs == 1:
        rows = measure(args)
    else:
        rows = median_of_runs(rows_of_fresh_processes(__file__, argv, args.runs),
                              ("model", "adam", "variant"), ("ms_per_step", "ratio_to_plain"))
    print(format_table(rows, ["model", "adam", "variant", "ms_per_step", "ratio_to_plain"]))
    for r in rows:
        if "ratio_to_plain_runs" in r and r["variant"] != "plain torch":
            print(f"{r['model']} / {r['adam']} / {r['variant']}: x plain per run "
                  f"{[round(v, 2) for v in r['ratio_to_plain_runs']]}")
    # other jobs on the machine: 1, 5 and 15 minute load averages against its cores
    config["load_average_before"] = [round(v, 2) for v in load_before]
    config["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    path = write_results(__file__, config=config, seeds=[SEED], rows=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
