"""The default-recipe benchmark's noise learning rate experiment (benchmarks/bmrs_defaults.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import pytest

from pyro_prune.data import load_dataset, train_val_split
from pyro_prune.inference.fit import DEFAULT_NOISE_LR

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def defaults(benchmark_module, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its imports of _common and bmrs_table
    return benchmark_module("bmrs_defaults")


@pytest.fixture(scope="module")
def digits() -> dict:
    full = load_dataset("digits", "train")
    train, val = train_val_split(full, val_fraction=0.2, seed=0)
    return {"train": train, "val": val, "test": load_dataset("digits", "test"), "info": full.info}


def test_the_plan_sweeps_every_rate_and_the_default_on_every_configuration(defaults) -> None:
    plan = defaults.PLANS["noise_lr"]
    assert set(plan) == set(defaults.CONFIGS)
    assert DEFAULT_NOISE_LR in defaults.NOISE_LRS and 1e-3 in defaults.NOISE_LRS  # 1e-3: fit's lr
    for items in plan.values():
        rates = [float(m.removeprefix(defaults.NOISE_LR_PREFIX)) for m, _, _ in items]
        assert sorted(rates) == sorted(defaults.NOISE_LRS)
        assert all(init == 0.0 and kl is None for _, init, kl in items)  # the default otherwise


@pytest.mark.parametrize("noise_lr", [1e-3, 0.1])
def test_a_run_trains_the_noise_at_its_rate(defaults, digits, noise_lr) -> None:
    args = argparse.Namespace(epochs=2, finetune=1, finetune_kl="elbo")
    run = defaults.run_one("digits", "mlp", 0, defaults.noise_lr_method(noise_lr), 0.0, None, args, digits)
    assert run["noise_lr"] == noise_lr
    assert run["method"] == f"bmrs_noise_lr{noise_lr:g}"
    assert run["test_accuracy"] > 0.5
    assert 0.0 <= run["compression"] < 1.0


def test_a_slow_noise_rate_prunes_less_on_the_same_budget(defaults, digits) -> None:
    args = argparse.Namespace(epochs=10, finetune=0, finetune_kl="elbo")
    slow, fast = (defaults.run_one("digits", "mlp", 0, defaults.noise_lr_method(v), 0.0, None, args, digits)
                  for v in (1e-3, 0.1))
    assert slow["compression"] < fast["compression"]


def test_the_table_pairs_each_rate_with_the_default_by_seed(benchmark_module, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mt = benchmark_module("make_tables")

    def run(method: str, seed: int, acc: float, comp: float, **extra) -> dict:
        return {"dataset": "mnist", "model": "mlp", "method": method, "seed": seed, "init_loc": 0.0,
                "finetune_kl": "elbo", "test_accuracy": acc, "compression": comp, **extra}

    table = {"rows": [{"dataset": "mnist", "model": "mlp", "paper_compression_%": 48.9}],
             "runs": [{"dataset": "mnist", "model": "mlp", "method": "none", "kl_scale": "elbo", "seed": s,
                       "test_accuracy": a} for s, a in ((0, 0.97), (1, 0.98))]}
    noise_lr = {"config": {"default_noise_lr": 0.03, "protocol": "p"}, "command": "bmrs_defaults.py x",
                "script": "bmrs_defaults.py",
                "runs": [run("bmrs_noise_lr0.03", 0, 0.95, 0.87), run("bmrs_noise_lr0.03", 1, 0.96, 0.86),
                         run("bmrs_noise_lr0.003", 0, 0.965, 0.70), run("bmrs_noise_lr0.003", 1, 0.975, 0.72),
                         run("bmrs_noise_lr0.1", 0, 0.94, 0.90)]}
    text = "\n".join(mt._noise_lr_table(table, noise_lr))
    rows = {line.split("|")[3].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| mnist")}
    assert list(rows) == ["0.003", "0.03 (default)", "0.1"]
    assert rows["0.003"][3:] == ["0 1", "71.0 ± 1.4", "48.9", "97.00 ± 0.71", "-0.50", "+1.50 (2)"]
    assert rows["0.03 (default)"][6:] == ["95.50 ± 0.71", "-2.00", "-"]
    assert rows["0.1"][3:] == ["0", "90.0 ± 0.0", "48.9", "94.00 ± 0.00", "-3.00", "-1.00 (1)"]
    assert mt._noise_lr_table(table, None) == []


def test_the_kl_warmup_rises_geometrically_from_the_elbo_weight_to_the_training_weight(defaults, digits) -> None:
    args = argparse.Namespace(epochs=5, finetune=2, finetune_kl="elbo")
    run = defaults.run_one("digits", "mlp", 0, "bmrs_warmup3", 0.0, None, args, digits)
    weight = run["kl_value"]  # "auto" = num_data / num_structures
    assert weight == pytest.approx(len(digits["train"]) / 100)
    seen = [e["kl_scale"] for e in run["epochs"]]
    assert seen[:5] == pytest.approx([1.0, weight ** (1 / 3), weight ** (2 / 3), weight, weight])
    assert seen[5:] == [1.0, 1.0]  # the default fine-tuning at the ELBO's weight
    assert run["warmup_epochs"] == 3


def test_the_warmup_table_sets_each_run_beside_the_default_of_its_seed(benchmark_module, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    mt = benchmark_module("make_tables")
    base = {"dataset": "mnist", "model": "mlp", "init_loc": 0.0, "finetune_kl": "elbo", "seed": 0}
    table = {"runs": [{"dataset": "mnist", "model": "mlp", "method": "none", "kl_scale": "elbo", "seed": 0,
                       "test_accuracy": 0.97}]}
    noise_lr = {"config": {"default_noise_lr": 0.03},
                "runs": [{**base, "method": "bmrs_noise_lr0.03", "test_accuracy": 0.955, "compression": 0.875},
                         {**base, "method": "bmrs_noise_lr0.01", "test_accuracy": 0.96, "compression": 0.8}]}
    warmup = {"config": {"protocol": "p"}, "command": "bmrs_defaults.py --experiment kl_warmup",
              "script": "bmrs_defaults.py",
              "runs": [{**base, "method": "bmrs_warmup5", "warmup_epochs": 5, "test_accuracy": 0.962,
                        "compression": 0.8},
                       {**base, "method": "bmrs_warmup3", "warmup_epochs": 3, "test_accuracy": 0.958,
                        "compression": 0.85}]}
    text = "\n".join(mt._kl_warmup_table(table, noise_lr, warmup))
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| mnist")]
    assert rows == [["mnist", "mlp", "0", "none (default)", "87.5", "95.50", "-1.50"],
                    ["mnist", "mlp", "0", "3", "85.0", "95.80", "-1.20"],
                    ["mnist", "mlp", "0", "5", "80.0", "96.20", "-0.80"]]
    assert mt._kl_warmup_table(table, noise_lr, None) == []
