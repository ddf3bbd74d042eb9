"""Run every benchmark with the settings of the committed results, then rebuild the result pages of the docs.

``make bench`` calls this. The long protocols cache finished runs
(``benchmarks/results/*.runs.json``), so an interrupted run resumes; data sets whose
files are missing are skipped with a note. ``--only NAME ...`` runs a subset.

    python benchmarks/run_all.py [--only reduction_speed training_speed]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: script -> arguments of the committed results (reduced protocols on a 2-core CPU; the
#: scripts' docstrings give the full ones)
BENCHMARKS: dict[str, list[str]] = {
    "reduction_speed": ["--repeats", "9"],
    "training_speed": ["--threads", "2", "--runs", "3"],
    "inference_speed": [],
    "bmrs_table": ["--models", "mlp", "lenet5", "--datasets", "mnist", "fashion-mnist",
                   "--methods", "none", "l2", "e_theta", "snr", "bmrs_n", "bmrs_n_code",
                   "bmrs_u8", "bmrs_u4", "--kl-scale", "paper", "elbo",
                   "--seeds", "0", "1", "2", "--epochs", "10", "--finetune", "3",
                   "--noise-lr", "3e-2", "--threads", "1", "--quiet"],
    "bmrs_table_full": ["--models", "mlp", "--datasets", "mnist", "fashion-mnist",
                        "--kl-scale", "paper", "--seeds", "0", "1", "2", "--epochs", "50",
                        "--finetune", "10", "--noise-lr", "3e-2", "--threads", "1", "--quiet",
                        "--suffix", "_full", "--runs-file", "results/bmrs_table_full.runs.json"],
    "bmrs_table_full_lenet": ["--models", "lenet5", "--datasets", "mnist", "fashion-mnist",
                              "--kl-scale", "paper",
                              "--seeds", "0", "1", "2", "--epochs", "50", "--finetune", "10",
                              "--noise-lr", "3e-2", "--threads", "1", "--quiet",
                              "--suffix", "_full_lenet",
                              "--runs-file", "results/bmrs_table_full_lenet.runs.json"],
    "bmrs_curves": ["--datasets", "mnist", "fashion-mnist", "--epochs", "10", "--seed", "0", "--quiet"],
    "bayes_factor_table": ["--datasets", "mnist", "fashion-mnist", "cifar10", "--models", "fcn",
                           "--seeds", "0", "1", "2", "--epochs", "5", "--train-subset", "10000",
                           "--threads", "1"],
    "bayes_factor_table_cnn": ["--datasets", "mnist", "fashion-mnist", "--models", "cnn",
                               "--methods", "magnitude", "bayes-magnitude-batch",
                               "--seeds", "0", "1", "2", "--epochs", "5", "--train-subset", "10000",
                               "--threads", "1", "--spare-first-last", "--plot-sparsity", "0.9",
                               "--suffix", "_cnn",
                               "--runs-file", "results/bayes_factor_table_cnn.runs.json"],
    "bayes_factor_gate": ["--datasets", "mnist", "fashion-mnist", "--seeds", "0", "1", "2",
                          "--epochs", "5", "--train-subset", "10000", "--threads", "1"],
    "bayes_factor_gate_full": ["--datasets", "mnist", "fashion-mnist", "--batches", "128",
                               "--seeds", "0", "1", "2", "--epochs", "25", "--train-subset", "0",
                               "--threads", "1", "--suffix", "_full"],
    "w2_fashion_mnist": ["--threads", "1", "--quiet"],
    "w2_uci": ["--threads", "1"],
    "w2_depth_width": ["--threads", "1"],
    "w2_search_time": ["--threads", "2"],
    "bayes_factor_table_full": ["--datasets", "mnist", "fashion-mnist", "--models", "fcn",
                                "--sparsities", "0.25", "0.5", "0.75", "0.9", "0.99",
                                "--methods", "random", "bayes-random-batch", "magnitude",
                                "bayes-magnitude-batch",
                                "--seeds", "0", "1", "2", "--epochs", "25", "--threads", "1",
                                "--suffix", "_full"],
    "bayes_factor_table_full_cnn": ["--datasets", "mnist", "--models", "cnn", "--sparsities", "0.99",
                                    "--methods", "magnitude", "bayes-magnitude-batch",
                                    "--seeds", "0", "1", "2", "--epochs", "25", "--threads", "1",
                                    "--spare-first-last", "--plot-sparsity", "0.99",
                                    "--suffix", "_full_cnn",
                                    "--runs-file", "results/bayes_factor_table_full_cnn.runs.json"],
}

#: results that a second grid of another script writes (``--suffix``)
SCRIPTS = {"bmrs_table_full": "bmrs_table",
           "bmrs_table_full_lenet": "bmrs_table",
           "bayes_factor_gate_full": "bayes_factor_gate",
           "bayes_factor_table_cnn": "bayes_factor_table",
           "bayes_factor_table_full": "bayes_factor_table",
           "bayes_factor_table_full_cnn": "bayes_factor_table"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        script = SCRIPTS.get(name, name)
        cmd = [sys.executable, str(HERE / f"{script}.py"), *BENCHMARKS[name]]
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        if subprocess.call(cmd, cwd=HERE) != 0:
            failed.append(name)
        print(f"== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    subprocess.call([sys.executable, str(HERE / "make_tables.py")], cwd=HERE)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
