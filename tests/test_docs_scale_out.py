"""docs/scale_out.md tells the truth: its own loop is fit, its torchrun and Lightning recipes run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from launch import torchrun

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "scale_out.md"


def block(title: str) -> str:
    found = re.search(rf'```python[^\n]*title="{re.escape(title)}"[^\n]*\n(.*?)```', PAGE.read_text(), re.S)
    assert found is not None, f"no block {title} in {PAGE}"
    return found.group(1)


def run_block(title: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile(block(title), f"{PAGE.name}:{title}", "exec"), namespace)
    return namespace


def test_own_loop_reproduces_fit() -> None:
    from pyro_prune.data import load_dataset
    from pyro_prune.inference import ContinuousPruning, fit
    from pyro_prune.models import MLP

    namespace = run_block("own_loop.py")
    own, history = namespace["model"], namespace["history"]
    torch.manual_seed(0)
    model = MLP(64, [100, 100], 10)
    result = fit(model, load_dataset("digits", "train"), epochs=8, batch_size=32, lr=1e-2,
                 seed=0, progress=False, schedule=ContinuousPruning(finetune_epochs=1))
    assert len(history) == len(result.history) == 9
    for mine, theirs in zip(history, result.history):
        for key in ("phase", "removed", "kept", "compression"):
            assert mine[key] == theirs[key], (key, mine, theirs)
    assert result.history[-1]["compression"] > 0.2  # it pruned
    theirs = model.state_dict()
    for name, value in own.state_dict().items():
        assert torch.equal(value, theirs[name]), name


@pytest.mark.slow
def test_augmented_dataset_trains() -> None:
    namespace = run_block("augmented_fit.py")
    result = namespace["result"]
    assert result.config["num_data"] == 1438
    assert len(result.history) == 8 and result.history[-1]["train_accuracy"] > 0.5
    assert result.history[-1]["compression"] > 0.2  # the defaults prune in its 315 steps


#: how far 2 processes may end from 1 (test accuracy, compression), the same random numbers
#: but the gradient summed in another order. Measured on the script's recipe (8 + 1 epochs,
#: batch 32, the defaults) over seeds 0-6: the MLP's epoch losses agree to about 1e-7
#: (relative) to the end, and kept structures and accuracy were equal in all 7; LeNet-5's
#: agree as closely for 4 epochs (at most 6e-7), then the rounding grows once the noise
#: widens (1e-2 to 6e-2 in the last epochs in 6 of 7): one structure more or fewer in 5 of 7
#: (compression at most 0.005 apart) and the accuracy 0, 1, 3 or 7 of the 359 test examples
#: apart (at most 0.0195; at seed 0, 0.0028). One process's spread over those seeds was 0.933 to 0.975 (MLP) and 0.964
#: to 0.969 (LeNet-5) in accuracy, 0.63 to 0.81 in compression.
ROUNDING = {"mlp": (1 / 359, 0.0), "lenet5": (0.025, 0.02)}


@pytest.mark.slow
def test_two_gloo_processes_reproduce_one(tmp_path, subprocess_env) -> None:
    """2 processes with global batch 32 against 1 process: the same run up to rounding."""
    script = tmp_path / "train_ddp.py"
    script.write_text(block("train_ddp.py"))
    subprocess_env = {**subprocess_env, "OMP_NUM_THREADS": "1"}  # one thread in every process
    torchrun([str(script), str(tmp_path / "two")], subprocess_env,
             results=[tmp_path / "two" / f"rank{r}.json" for r in (0, 1)])
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = _single_process(script, tmp_path, subprocess_env)  # the same script, one process
    for name, (accuracy, compression) in ROUNDING.items():
        two, one = ranks[0][name], single[name]
        assert two["kept"] == ranks[1][name]["kept"]
        assert two["world_size"] == 2 and two["backend"] == "gloo"
        assert abs(two["accuracy"] - one["accuracy"]) <= accuracy + 1e-9, (name, two, one)
        assert abs(two["compression"] - one["compression"]) <= compression + 1e-9, (name, two, one)
        assert two["compression"] > 0.5 and one["compression"] > 0.5  # the defaults prune in 360 steps
    assert ranks[0]["mlp"]["kept"] == single["mlp"]["kept"]


def _single_process(script: Path, tmp_path: Path, env: dict[str, str]) -> dict:
    # a fresh interpreter with the environment torchrun's workers get, so thread settings match
    out = tmp_path / "one"
    done = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "rank0.json").read_text())
    assert report["mlp"]["world_size"] == 1
    return report


@pytest.mark.slow
def test_lightning_ddp_recipe_prunes_alike_on_two_processes(tmp_path, subprocess_env) -> None:
    """Trainer(accelerator="cpu", devices=2, strategy="ddp"): both ranks keep the same structures."""
    pytest.importorskip("lightning")
    script = tmp_path / "lightning_ddp.py"
    script.write_text(block("lightning_ddp.py"))
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], env=subprocess_env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["compression"] > 0.2 and ranks[0]["val_accuracy"] > 0.85
    from pyro_prune.models import MLP

    assert ranks[0]["params"] < sum(p.numel() for p in MLP(64, [100, 100], 10).net.parameters())

