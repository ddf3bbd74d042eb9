"""The ``pyro-prune`` command (also ``python -m pyro_prune``).

    pyro-prune fit --model mlp --data digits --epochs 20 --out runs/mlp
    pyro-prune fit --model lenet5 --data mypkg.mydata:make_datasets --device auto
    pyro-prune report runs/mlp
    pyro-prune export runs/mlp --format onnx
    pyro-prune demo

``fit`` trains with continuous pruning (Wright, Igel & Selvan, NeurIPS 2024, Algorithm 1)
and writes a *run folder*:

=============================  ===============================================================
``config.json``                every setting, the data set's shapes and library versions
``history.json``               one row per epoch (loss, accuracy, kept structures, compression)
``checkpoint.pt``              the resumable training state: running the same command again
                               continues where it stopped (``--restart`` starts over)
``model.pt``                   the Pyro model's ``state_dict`` (variational parameters, masks)
``converted_state_dict.pt``    the smaller deterministic network's ``state_dict``
``converted.pt2``              the same network as a ``torch.export`` program, batch size free
                               (``torch.export.load(path).module()``; no pyro_prune needed)
``posterior.nc``               the ArviZ InferenceData (netCDF; :mod:`pyro_prune.inspect`), with
                               the log likelihood of training data (for PSIS-LOO)
``calibration.json``           reliability bins and ECE, removed structures restored and pruned
``test_lpd.json``              pointwise test-set log predictive density of the pruned network
``metrics.json``               test accuracy, compression, MACs, latency, test-set log
                               predictive density (pruned, restored, paired difference and
                               SE), PSIS-LOO on training data, W2 shift, ECE, the pruning
                               report; written last: a run folder that has it is finished, and
                               running the same command again only reads it back
=============================  ===============================================================

``report`` writes ``report.md`` with tables and PNG figures into the run folder; ``export``
writes the converted network as a ``torch.export`` program (the default), a state dict,
ONNX, or TorchScript (deprecated in current torch, kept for older deployments).

``--data`` is a named data set or the user's own data: ``module:function`` returning
``(train, test)`` Datasets or DataLoaders, or a tensor file (:mod:`pyro_prune.user_data`).
``--device`` chooses where training runs (under ``torchrun`` on CUDA: ``cuda:LOCAL_RANK``
and NCCL; :func:`~pyro_prune.inference.distributed.select_device`).

Every bad argument (unknown model or method, a data set that cannot be found, epochs <= 0,
a run folder that does not exist, a damaged ``model.pt``, a diverging run, ...) ends with exit
code 2 and one line naming the problem. A run folder is locked while a command works in it
(a second ``fit`` on it is refused, naming the holder), and every file is written under a
temporary name and renamed, so a killed run never leaves a truncated file (see
``docs/reliability.md``).
The command is a thin layer over the application's modules: :mod:`pyro_prune.runs` (the
settings, the registries of models and methods (:data:`~pyro_prune.runs.MODELS`,
:data:`~pyro_prune.runs.METHODS`), running a fit), :mod:`pyro_prune.evaluation` (what a run
measures), :mod:`pyro_prune.report`, :mod:`pyro_prune.export` (:data:`~pyro_prune.export.EXPORTERS`)
and :mod:`pyro_prune.run_folder`. Their names are still importable from here for one release,
with a ``DeprecationWarning``.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pyro_prune._checks import SEED_MAX
from pyro_prune._deprecation import moved_names
from pyro_prune._io import FolderLockedError
from pyro_prune.export import ExportFormat
from pyro_prune.inference.schedules import DEFAULT_EPOCHS, PRUNING_STEPS_MARGIN
from pyro_prune.report import write_report
from pyro_prune.run_folder import EXIT_USAGE, PROG, UsageError, one_line
from pyro_prune.runs import (
    METHODS,
    MODELS,
    RunConfig,
    export_run,
    run_fit,
)

__all__ = ["build_parser", "main"]

#: names that lived here before the application was split into modules -> their module now
_MOVED = {
    "CALIBRATION_DRAWS": "pyro_prune.evaluation",
    "CALIBRATION_FILE": "pyro_prune.run_folder",
    "CHECKPOINT_FILE": "pyro_prune.run_folder",
    "CONFIG_FILE": "pyro_prune.run_folder",
    "CONVERTED_STATE_FILE": "pyro_prune.run_folder",
    "CURVE_FILE": "pyro_prune.run_folder",
    "DataShape": "pyro_prune.runs",
    "EXPORTED_PROGRAM_FILE": "pyro_prune.run_folder",
    "EXPORTERS": "pyro_prune.export",
    "FIGURES_DIR": "pyro_prune.run_folder",
    "FINISHED_RUN_FILES": "pyro_prune.run_folder",
    "FitData": "pyro_prune.runs",
    "HISTORY_FILE": "pyro_prune.run_folder",
    "IDATA_FILE": "pyro_prune.run_folder",
    "LPD_FILE": "pyro_prune.run_folder",
    "LoadedRun": "pyro_prune.runs",
    "METRICS_FILE": "pyro_prune.run_folder",
    "MODEL_FILE": "pyro_prune.run_folder",
    "MethodSpec": "pyro_prune.runs",
    "ModelSpec": "pyro_prune.runs",
    "REPORT_FILE": "pyro_prune.run_folder",
    "RUN_OUTPUTS": "pyro_prune.run_folder",
    "RunResult": "pyro_prune.runs",
    "USER_EVAL_EXAMPLES": "pyro_prune.evaluation",
    "accuracy_curves": "pyro_prune.evaluation",
    "all_kept": "pyro_prune.evaluation",
    "build_model": "pyro_prune.runs",
    "interleaved_timings": "pyro_prune.evaluation",
    "load_data": "pyro_prune.runs",
    "load_fit_data": "pyro_prune.runs",
    "load_run": "pyro_prune.runs",
    "markdown_table": "pyro_prune.report",
    "median_latencies": "pyro_prune.evaluation",
    "paired_speedup": "pyro_prune.evaluation",
    "resolve_device": "pyro_prune.runs",
}
__getattr__ = moved_names(__name__, _MOVED)


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument as one line (``prog: error: message``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {' '.join(message.split())}\n")


def _number_arg(convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)`` accepted when ``ok``, else "must be <what>"."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive_int = _number_arg(int, lambda v: v >= 1, "a positive integer")


_nonnegative_int = _number_arg(int, lambda v: v >= 0, "an integer >= 0")


_positive_float = _number_arg(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


_seed = _number_arg(int, lambda v: 0 <= v <= SEED_MAX, f"an integer in 0..{SEED_MAX}")


_fraction = _number_arg(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers, got {text!r}")
    return values


def _names(registry: dict[str, Any], what: str) -> Callable[[str], list[str]]:
    """Parser of a comma-separated list of registry names."""

    def parse(text: str) -> list[str]:
        names = [v for v in text.replace(" ", "").split(",") if v]
        unknown = [v for v in names if v not in registry]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown)) or repr(text)}; "
                f"choose from {', '.join(registry)}")
        return names

    return parse


def _choices_help(registry: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {getattr(spec, 'help', '')}" for name, spec in registry.items())


def _add_fit_arguments(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    p.add_argument("--model", choices=list(MODELS), default=d.model,
                   help=f"network (default {d.model}). {_choices_help(MODELS)}")
    p.add_argument("--data", required=True, metavar="NAME",
                   help="data set: digits (embedded), mnist, fashion-mnist, cifar10, uci/<name> "
                        "(files under $PYRO_PRUNE_DATA or --data-root); or your own: "
                        "module:function returning (train, test) Datasets or DataLoaders, or a "
                        "file.pt saved with torch.save({'train': (x, y), 'test': (x, y)})")
    p.add_argument("--method", choices=list(METHODS), default=d.method,
                   help=f"pruning method (default {d.method}). {_choices_help(METHODS)}")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs,
                   help=f"training epochs with pruning after each (default {DEFAULT_EPOCHS}, or more on "
                        f"a small data set: enough for {PRUNING_STEPS_MARGIN:g}x the optimizer steps the "
                        "noise posteriors need to reach their prior, 801 at the default --noise-lr)")
    p.add_argument("--finetune-epochs", type=_nonnegative_int, default=d.finetune_epochs,
                   help=f"epochs without pruning afterwards (default {d.finetune_epochs})")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                   help=f"minibatch size (default {d.batch_size})")
    p.add_argument("--lr", type=_positive_float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--noise-lr", type=_positive_float, default=d.noise_lr,
                   help=f"learning rate of the noise posteriors (default {d.noise_lr})")
    p.add_argument("--seed", type=_seed, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--kl-scale", default=d.kl_scale,
                   help="weight of the KL term, a temperature: 'elbo' (1), 'paper' (num_data / "
                        "num_structures, as in the BMRS authors' code, on the noise's KL; "
                        "Gaussian weights keep 1), 'auto' ('paper' for a classifier with noise "
                        f"gates, else 'elbo') or a number, for every KL term (default {d.kl_scale})")
    p.add_argument("--finetune-kl-scale", default=d.finetune_kl_scale,
                   help="KL weight of the fine-tuning epochs, once the structures are chosen: "
                        "as --kl-scale, or 'train' to keep the training weight (default "
                        f"{d.finetune_kl_scale}: the reduced network's untempered posterior)")
    p.add_argument("--kl-warmup-epochs", type=_nonnegative_int, default=d.kl_warmup_epochs,
                   help="warm the KL weight up from 1 (the ELBO's) to --kl-scale over the first N "
                        f"training epochs, geometrically (0: off; default {d.kl_warmup_epochs})")
    p.add_argument("--hidden", type=_int_list, default=None, metavar="W1,W2,...",
                   help="hidden widths of --model mlp (default 100,100)")
    p.add_argument("--val-fraction", type=_fraction, default=d.val_fraction,
                   help=f"fraction of the training set held out for validation (default {d.val_fraction})")
    p.add_argument("--num-samples", type=_positive_int, default=d.num_samples,
                   help=f"posterior draws in the InferenceData (default {d.num_samples})")
    p.add_argument("--curve-points", type=_nonnegative_int, default=d.curve_points,
                   help="points of the accuracy-vs-compression curve (0: none; each costs one "
                        "epoch of fine-tuning)")
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on a stratified subset of N training examples")
    p.add_argument("--eval-examples", type=_positive_int, default=None, metavar="N",
                   help="test examples (a stratified subset) for the InferenceData, PSIS-LOO and "
                        "the W2 check (default: the whole test set; accuracy always uses all)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder of the data sets (default $PYRO_PRUNE_DATA)")
    from pyro_prune.inference.distributed import DeviceChoice

    p.add_argument("--device", choices=[c.value for c in DeviceChoice], default=d.device,
                   help="where training runs: auto (CUDA when available), cpu or cuda; under "
                        "torchrun on CUDA each process uses cuda:LOCAL_RANK and NCCL (default "
                        f"{d.device})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _config_from(args: argparse.Namespace) -> RunConfig:
    return RunConfig(model=args.model, data=args.data, method=args.method, epochs=args.epochs,
                     finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                     noise_lr=args.noise_lr, seed=args.seed, kl_scale=str(args.kl_scale),
                     finetune_kl_scale=str(args.finetune_kl_scale),
                     kl_warmup_epochs=args.kl_warmup_epochs, hidden=args.hidden,
                     val_fraction=args.val_fraction, num_samples=args.num_samples,
                     curve_points=args.curve_points, train_subset=args.train_subset,
                     eval_examples=args.eval_examples, device=args.device)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    data_name = re.sub(r"[^\w.-]+", "_", cfg.data).strip("_.")
    out = Path(args.out) if args.out else Path("runs") / f"{cfg.model}-{data_name}-{cfg.method}"
    res = run_fit(cfg, out, data_root=args.data_root, progress=not args.no_progress,
                  restart=args.restart, log=_log)
    m = res.metrics
    if not m:  # a rank other than 0 of a torchrun run: rank 0 reports
        return 0
    score = (f"test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m
             else f"test RMSE {m.get('test_rmse', float('nan')):.4f} (normalised targets)")
    print(f"{score}  compression {m['compression']:.3f}  "
          f"MACs {m['macs_pruned']}/{m['macs_full']}  speedup {m.get('speedup', float('nan')):.2f}x  "
          f"test lpd {m['test_lpd']:.1f} (pruned - restored {m['test_lpd_diff']:+.1f} +- "
          f"{m['test_lpd_diff_se']:.1f})")
    if m.get("pruning_report"):
        print(m["pruning_report"])
    if m.get("chance_note"):
        print(m["chance_note"])
    print(f"run folder: {out}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.dir)
    print(f"report: {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    path = export_run(args.dir, args.format, args.output)
    print(f"exported {args.format}: {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pyro_prune.demo import DemoConfig, run_demo

    cfg = DemoConfig(data=args.data, out=Path(args.out), epochs=args.epochs,
                     finetune_epochs=args.finetune_epochs, seed=args.seed,
                     num_samples=args.num_samples, curve_points=args.curve_points,
                     train_subset=args.train_subset, models=tuple(args.models),
                     methods=tuple(args.methods), noise_lr=args.noise_lr)
    run_demo(cfg, data_root=args.data_root, progress=not args.no_progress, restart=args.restart)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-prune`` argument parser (subcommands ``fit``, ``report``, ``export``, ``demo``)."""
    import pyro_prune

    parser = _Parser(prog=PROG, description="Bayesian pruning of neural networks on Pyro.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {pyro_prune.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub.add_parser("fit", help="train with continuous pruning and write a run folder",
                       description="Train a network with continuous pruning and write a run folder "
                                   "(resumable: the same command continues an interrupted run).")
    _add_fit_arguments(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default runs/<model>-<data>-<method>)")
    p.add_argument("--restart", action="store_true", help="discard a checkpoint in --out and start over")
    p.set_defaults(handler=_cmd_fit)

    p = sub.add_parser("report", help="write report.md with tables and figures for a run folder",
                       description="Write report.md and PNG figures into a run folder.")
    p.add_argument("dir", metavar="DIR", help="run folder written by 'pyro-prune fit'")
    p.set_defaults(handler=_cmd_report)

    p = sub.add_parser("export", help="export the converted network of a run folder",
                       description="Convert a run's model to a smaller deterministic network and "
                                   "write it as a torch.export program, a state dict, ONNX or "
                                   "TorchScript (deprecated in current torch).")
    p.add_argument("dir", metavar="DIR", help="run folder written by 'pyro-prune fit'")
    p.add_argument("--format", choices=[f.value for f in ExportFormat],
                   default=ExportFormat.EXPORTED_PROGRAM.value,
                   help="output format (default exported-program: torch.export, .pt2)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="file to write (default DIR/export/model.<suffix>)")
    p.set_defaults(handler=_cmd_export)

    from pyro_prune.demo import DATA_DEFAULTS, DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="the end-to-end demo (digits by default)",
                       description="Fit an MLP and LeNet-5 with BMRS_N continuous pruning and the "
                                   "SNR baseline, check the posterior predictive, convert, and "
                                   "print a table; writes a report with figures.")
    p.add_argument("--data", default=d.data, choices=["digits", "mnist"],
                   help="digits (embedded, default) or mnist (needs $PYRO_PRUNE_DATA)")
    p.add_argument("--out", default=str(d.out), metavar="DIR", help=f"output folder (default {d.out})")
    per_data = ", ".join(f"{k}: {v.epochs}+{v.finetune_epochs}" for k, v in DATA_DEFAULTS.items())
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"training epochs (default per data set, training+fine-tuning: {per_data})")
    p.add_argument("--finetune-epochs", type=_nonnegative_int, default=None,
                   help="fine-tuning epochs without pruning (default per data set)")
    p.add_argument("--models", type=_names(MODELS, "model"), default=list(d.models),
                   metavar="M1,M2", help=f"networks (default {','.join(d.models)})")
    p.add_argument("--methods", type=_names(METHODS, "method"), default=list(d.methods),
                   metavar="M1,M2", help=f"methods, 'none' is the reference (default {','.join(d.methods)})")
    p.add_argument("--noise-lr", type=_positive_float, default=d.noise_lr,
                   help=f"learning rate of the noise posteriors (default {d.noise_lr})")
    p.add_argument("--seed", type=_seed, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--num-samples", type=_positive_int, default=d.num_samples,
                   help=f"posterior draws for ArviZ (default {d.num_samples})")
    p.add_argument("--curve-points", type=_nonnegative_int, default=None,
                   help="points of the accuracy-vs-compression curve (default per data set)")
    p.add_argument("--train-subset", type=_positive_int, default=None, metavar="N",
                   help="train on N training examples (a stratified subset)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="folder of the data sets (default $PYRO_PRUNE_DATA)")
    p.add_argument("--restart", action="store_true", help="retrain instead of resuming runs in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-prune``; returns the exit code (2 for bad arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (message already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    try:
        return int(args.handler(args) or 0)
    except (UsageError, FolderLockedError) as err:
        print(f"{PROG} {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # the file system refused: read-only, full, not a folder, ...
        where = f": {err.filename}" if err.filename else ""
        print(f"{PROG} {args.command}: error: {err.strerror or one_line(err)}{where}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
