"""Time per training step: SVI on the noise model vs a plain PyTorch step.

For the MNIST MLP (7x100) and LeNet5, same batch (128), same threads, side by side in one
process: the plain deterministic network (cross-entropy, Adam), the noise model with the
fast ELBO (``engine="fast"``, the default of ``fit``: the noise of all layers drawn in one
kernel call, one draw per example or, with ``per_example_noise=False``, one per step) with
that kernel compiled (Numba: :mod:`pyro_prune.models.noise_kernels_jit`, the default where
installed) and as torch operations, the same with one torch kernel call per layer, and the
model through Pyro's ``TraceMeanField_ELBO``
(``engine="pyro"``). The fast-ELBO variants run fit's own epoch loop
(:class:`~pyro_prune.inference.epoch.EpochTrainer` over ``--steps`` copies of one batch):
the loss, the two Adam parameter groups, the finite-loss check and the loss and accuracy
sums of every step, i.e. what ``fit`` runs per step except the data loading (which the
plain step does not pay either). Each variant trains its own copy of the network. Median over repeats, interleaved so that machine noise hits every
variant alike. Each variant runs with Adam's ``foreach=True`` implementation and with its
fused kernel (what :func:`pyro_prune.inference.fit` uses where the device has it); ratios
are to the plain step with the same Adam. LeNet5 also runs the default step with each conv
gate between its convolution and its ReLU (the same model, see
:class:`~pyro_prune.models.LeNet5`; its gates sit after ReLU and max-pool, on a quarter of
the elements), so that the placement's cost is measured side by side.

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
from collections.abc import Callable, Iterator
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

from pyro_prune.inference.batches import BatchSource
from pyro_prune.inference.distributed import DistributedInfo, GradientSync
from pyro_prune.inference.elbo import NoisePlan, _fused_noise, fast_elbo_loss, pyro_elbo_loss
from pyro_prune.inference.epoch import EpochTrainer, FitContext
from pyro_prune.inference.loop import ElboLoss
from pyro_prune.inference.optim import _param_groups, trainable_parameters
from pyro_prune.inference.schedules import ContinuousPruning
from pyro_prune.models import MLP, LeNet5, PrunableNet, noise_kernels_jit

SEED = 0
NUM_DATA = 60000
LR = 1e-3
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


class _SameBatch(BatchSource):
    """``steps`` copies of one batch: an epoch of fit's loop without the data's cost."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps
        self.batch_size = len(x)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        for _ in range(self.steps):
            yield self.x, self.y, len(self.x)


def _fit_epoch(net: PrunableNet, x: torch.Tensor, y: torch.Tensor, adam: dict[str, bool],
               per_example: bool, steps: int) -> tuple[Callable[[], Any], NoisePlan]:
    """``steps`` training steps through fit's own epoch loop (:class:`EpochTrainer`): its loss
    (:class:`ElboLoss`), its two Adam groups (:func:`make_optimizer`'s, with the noise at the
    same learning rate as the weights so that random data keep the posteriors in the compiled
    kernel's reach) and its per-step bookkeeping (finite-loss check, loss and accuracy sums)."""
    loss_fn = ElboLoss(net, num_data=NUM_DATA, kl_scale="auto", per_example=per_example)
    optimizer = torch.optim.Adam(_param_groups(net, net.guide, LR, LR), lr=LR, **adam)
    ctx = FitContext(model=net, guide=net.guide, optimizer=optimizer, train=None, val=None,
                     batch_size=len(x), seed=SEED, epochs=1, loss_fn=loss_fn)
    trainer = EpochTrainer(ctx, source=_SameBatch(x, y, steps), loss_fn=loss_fn,
                           sync=GradientSync(trainable_parameters(net, net.guide), DistributedInfo()),
                           info=DistributedInfo(), schedule=ContinuousPruning(), device=torch.device("cpu"),
                           shared_noise=True, running_accuracy=True, lr=LR, noise_lr=LR)
    assert loss_fn.plan is not None
    return trainer, loss_fn.plan


def _gates_before_relu(lenet: LeNet5) -> PrunableNet:
    """The same LeNet5 (its modules, not copies) with each conv gate between the convolution
    and its ReLU: the placement that multiplies the full conv outputs."""
    from collections import OrderedDict

    first = ("conv1", "conv1_gate", "relu1", "pool1", "conv2", "conv2_gate", "relu2", "pool2")
    names = [*first, *(n for n, _ in lenet.net.named_children() if n not in first)]
    return PrunableNet(torch.nn.Sequential(OrderedDict((n, lenet.net.get_submodule(n)) for n in names)))


def _step_fns(make, x, y, adam: dict[str, bool], steps: int, extra: dict[str, Callable] | None = None):
    """Each variant's function running ``steps`` training steps, and the noise plans to check;
    ``extra``: further default (per-example, compiled) variants, each a function of the
    network ``make`` gives."""
    torch.manual_seed(SEED)
    plain = _plain_copy(make())
    opt_plain = torch.optim.Adam(plain.parameters(), lr=LR, **adam)

    def plain_steps():
        for _ in range(steps):
            opt_plain.zero_grad(set_to_none=True)
            loss = F.cross_entropy(plain(x), y)
            loss.backward()
            opt_plain.step()

    plans = []

    def fresh(rebuild: Callable | None = None) -> PrunableNet:
        torch.manual_seed(SEED)
        net = make() if rebuild is None else rebuild(make())
        net.train()
        return net

    def fit_steps(per_example: bool, compiled: bool = True, rebuild: Callable | None = None):
        trainer, plan = _fit_epoch(fresh(rebuild), x, y, adam, per_example, steps)
        plans.append((plan, per_example, compiled))

        def run():
            old = noise_kernels_jit.set_enabled(compiled)
            try:
                trainer()
            finally:
                noise_kernels_jit.set_enabled(old)

        return run

    def loss_steps(per_example: bool, fused: bool):
        """The loss alone (no epoch loop), e.g. one torch kernel call per layer."""
        net = fresh()
        net.num_data = NUM_DATA
        optimizer = torch.optim.Adam(_param_groups(net, net.guide, LR, LR), lr=LR, **adam)

        def run():
            old = noise_kernels_jit.set_enabled(False)
            try:
                for _ in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss, _ = fast_elbo_loss(net, x, y, per_example=per_example, fused=fused)
                    loss.backward()
                    optimizer.step()
            finally:
                noise_kernels_jit.set_enabled(old)

        return run

    pyro_net = fresh()
    pyro_net.num_data = NUM_DATA
    opt_pyro = torch.optim.Adam(pyro_net.parameters(), lr=LR, **adam)

    def pyro_steps():
        for _ in range(steps):
            opt_pyro.zero_grad(set_to_none=True)
            loss = pyro_elbo_loss(pyro_net, x, y)
            loss.backward()
            opt_pyro.step()

    fns = {"plain torch": plain_steps}
    if noise_kernels_jit.available():
        fns["fast ELBO, one draw per step (per_example_noise=False), compiled kernel"] = fit_steps(False)
        fns["fast ELBO, one draw per example (default), compiled kernel"] = fit_steps(True)
        for name, rebuild in (extra or {}).items():
            fns[name] = fit_steps(True, rebuild=rebuild)
    fns.update({
        "fast ELBO, one draw per step, torch kernel": fit_steps(False, compiled=False),
        "fast ELBO, one draw per example, torch kernel": fit_steps(True, compiled=False),
        "fast ELBO, per example, one kernel call per layer": loss_steps(True, fused=False),
        "Pyro TraceMeanField_ELBO": pyro_steps,
    })
    return fns, plans


def _check_kernel_path(plans: list[tuple[NoisePlan, bool, bool]], batch: int) -> None:
    """Every fused variant still draws through the one network-wide kernel (a posterior out of
    its reach would have sent it to the exact per-layer distribution, another code path)."""
    for plan, per_example, compiled in plans:
        old = noise_kernels_jit.set_enabled(compiled)
        try:
            with torch.no_grad():
                drawn = _fused_noise(plan, batch if per_example else None)
        finally:
            noise_kernels_jit.set_enabled(old)
        for m in plan.layers:
            m.__dict__["_drawn_theta"] = None
        if drawn is None:
            raise RuntimeError("a variant left the network-wide noise kernel during the timing")


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time every variant of both models side by side in this process."""
    models = {
        "MLP 7x100": (lambda: MLP(784, [100] * 7, 10), (1, 28, 28), {}),
        "LeNet5": (lambda: LeNet5(1, 10, 28), (1, 28, 28),
                   {"fast ELBO, one draw per example (default), compiled kernel, "
                    "conv gates before ReLU and pool": _gates_before_relu}),
    }
    rows = []
    for model_name, (make, shape, extra) in models.items():
        g = torch.Generator().manual_seed(SEED)
        x = torch.randn(args.batch, *shape, generator=g)
        y = torch.randint(0, 10, (args.batch,), generator=g)
        fns: dict[tuple[str, str], Any] = {}
        plans = []
        for adam, options in ADAMS.items():
            variants, variant_plans = _step_fns(make, x, y, options, args.steps, extra)
            plans += variant_plans
            for name, fn in variants.items():
                if adam != "foreach" and ("Pyro" in name or "per layer" in name):
                    continue  # the two Adam implementations compared on the main variants only
                fns[(adam, name)] = fn
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for key, fn in fns.items():
                t0 = clock()
                fn()
                times[key].append((clock() - t0) / args.steps)
        _check_kernel_path(plans, args.batch)
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
