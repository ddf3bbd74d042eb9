"""Pruning decisions under torchrun: Bayes-factor pruning and the W2 search agree on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launch import describe, differences, torchrun

#: run by ``torchrun --nproc_per_node=2``: every rank records what it decided
SCRIPT = '''
import hashlib
import json
import os
import sys

import torch

from pyro_prune.data import load_dataset
from pyro_prune.inference import fit, w2_prune
from pyro_prune.reduction.bayes_factor_pruning import BayesFactorPruning
from pyro_prune.models import FCN, MLP
from pyro_prune.models.fcn import weight_masks


def digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()


train = load_dataset("digits", "train")
report = {}
cases = {
    "laplace_magnitude": dict(target_sparsity=0.25, method="magnitude"),  # the default gate
    # random candidates from the schedule's generator, the paper's point evidence, no gate
    "random": dict(target_sparsity=0.5, method="random", evidence="point", gate=False),
}
for name, options in cases.items():
    torch.manual_seed(0)
    net = FCN(64, 10, hidden=(32, 16))
    schedule = BayesFactorPruning(**options)
    result = fit(net, train, epochs=1, batch_size=64, lr=3e-3, schedule=schedule, seed=0,
                 progress=False)
    row = result.history[-1]
    report[name] = {"decision": [row["pruned"], row["log_bayes_factor"], row["sparsity"]],
                    "accepted": schedule.accepted_epochs, "masks": digest(weight_masks(net)),
                    "weights": digest(net.state_dict()), "world_size": result.config["world_size"]}
torch.manual_seed(0)
bnn = MLP(64, [32, 32], 10, weights="gaussian", gate="mask")
fit(bnn, train, epochs=1, batch_size=64, lr=1e-2, seed=0, progress=False)
search = w2_prune(bnn, train, max_inputs=128)  # on every rank, after the data-parallel fit
report["w2"] = {"kept": search.best["kept_per_gate"], "mask": digest(search.mask),
                "weights": digest(bnn.state_dict())}
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(report, f)
'''


def _one_process(tmp_path: Path, env: dict[str, str]) -> dict:
    """What the script :func:`_two_ranks` ran wrote when run by one process (one thread)."""
    import subprocess
    import sys

    one = tmp_path / "one"
    one.mkdir()
    done = subprocess.run([sys.executable, str(tmp_path / "script.py"), str(one)],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((one / "rank0.json").read_text())


def _two_ranks(script: str, tmp_path: Path, env: dict[str, str]) -> tuple[dict, dict]:
    """What ranks 0 and 1 of ``torchrun --nproc_per_node=2 script`` wrote (one thread each),
    after checking that they wrote the same."""
    path = tmp_path / "script.py"
    path.write_text(script)
    done = torchrun([str(path), str(tmp_path)], {**env, "OMP_NUM_THREADS": "1"},
                    results=[tmp_path / f"rank{r}.json" for r in (0, 1)])
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1, ("the ranks differ", differences(rank0, rank1), describe(done))
    return rank0, rank1


@pytest.mark.slow
def test_two_gloo_processes_make_the_same_pruning_decisions(tmp_path, subprocess_env) -> None:
    """BayesFactorPruning (Laplace gate; random candidates) decides on rank 0 and broadcasts
    masks, weights and the candidate generator; W2 search after the fit finds one mask."""
    pytest.importorskip("asdl")  # the Laplace evidence (the laplace extra)
    rank0, rank1 = _two_ranks(SCRIPT, tmp_path, subprocess_env)
    for case in ("laplace_magnitude", "random"):
        assert rank0[case]["world_size"] == 2
        assert rank0[case]["accepted"] == [1]  # each pruned once: the same weights on both ranks
    assert rank0["laplace_magnitude"]["decision"][1] > 0  # the Laplace gate opened
    assert rank0["random"]["decision"][2] == pytest.approx(0.5)
    assert sum(rank0["w2"]["kept"].values()) < 64  # the W2 search removed neurons


#: run by ``torchrun --nproc_per_node=2``: the same fit on an (inputs, targets) pair and on
#: its TensorDataset, every rank recording the weights it ends with
PAIR_SCRIPT = '''
import hashlib
import json
import os
import sys

import torch
from torch.utils.data import TensorDataset

from pyro_prune.data import load_dataset
from pyro_prune.inference import fit
from pyro_prune.models import MLP

x, y = load_dataset("digits", "train").tensors
report = {}
for name, data in {"pair": (x, y), "tensor_dataset": TensorDataset(x, y)}.items():
    torch.manual_seed(0)
    net = MLP(64, [32], 10)
    result = fit(net, data, epochs=2, batch_size=64, lr=1e-2, seed=0, progress=False)
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().contiguous().numpy().tobytes())
    report[name] = {"weights": h.hexdigest(), "world_size": result.config["world_size"],
                    "train_accuracy": result.history[-1]["train_accuracy"]}
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(report, f)
'''


@pytest.mark.slow
def test_two_gloo_processes_shard_a_pair_as_its_tensor_dataset(tmp_path, subprocess_env) -> None:
    """fit(model, (x, y)) under torchrun: the ranks share each global batch as they share a
    TensorDataset's, and end with the same weights as the TensorDataset run."""
    rank0, _ = _two_ranks(PAIR_SCRIPT, tmp_path, subprocess_env)
    assert rank0["pair"] == rank0["tensor_dataset"], differences(rank0["pair"], rank0["tensor_dataset"])
    assert rank0["pair"]["world_size"] == 2 and rank0["pair"]["train_accuracy"] > 0.8


#: run by ``torchrun --nproc_per_node=2`` and by one process: fit under AutoNormal, pruning on
#: the defaults; every rank records what it kept and a digest of its guide
AUTOGUIDE_SCRIPT = '''
import hashlib, json, os, sys
import pyro
import torch
from pyro.infer.autoguide import AutoNormal
from pyro_prune.data import load_dataset
from pyro_prune.inference import ContinuousPruning, evaluate, fit
from pyro_prune.models import MLP

train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
torch.manual_seed(0)
pyro.clear_param_store()
net = MLP(64, [100, 100], 10)
guide = AutoNormal(net)
result = fit(net, train, epochs=12, batch_size=32, lr=1e-2, guide=guide, seed=0, progress=False,
             schedule=ContinuousPruning(finetune_epochs=1))
h = hashlib.sha256()
for key, value in sorted(guide.state_dict().items()):
    h.update(key.encode())
    h.update(value.detach().contiguous().numpy().tobytes())
row = result.history[-1]
with open(os.path.join(sys.argv[1], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump({"kept": row["kept"], "compression": row["compression"], "criterion": result.report.criterion,
               "guide": h.hexdigest(), "losses": [r["loss"] for r in result.history],
               "world_size": result.config["world_size"], "accuracy": evaluate(net, test)["accuracy"]}, f)
'''


@pytest.mark.slow
def test_two_gloo_processes_fit_an_autoguide_as_one_process(tmp_path, subprocess_env) -> None:
    """fit under AutoNormal on 2 ranks: the guide is broadcast, its gradients combined and its
    draws shared, so both ranks end with the same guide, and with the structures, accuracy
    and losses (up to rounding) of one process with the same global batch."""
    rank0, _ = _two_ranks(AUTOGUIDE_SCRIPT, tmp_path, subprocess_env)
    single = _one_process(tmp_path, subprocess_env)
    assert rank0["world_size"] == 2 and single["world_size"] == 1
    assert rank0["criterion"] == single["criterion"] == "bmrs_u4"
    assert rank0["kept"] == single["kept"] and rank0["compression"] > 0.2
    assert abs(rank0["accuracy"] - single["accuracy"]) <= 1 / 359 + 1e-9  # one test digit
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)


#: a process that joins a one-process gloo group and runs ``destroy_own_group`` as its exit
#: would: after a normal run, and after an uncaught exception (``sys.last_value`` set)
TEARDOWN_SCRIPT = '''
import sys
import torch.distributed as dist
from pyro_prune.inference.distributed import destroy_own_group

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
if sys.argv[2] == "exception":
    sys.last_value = RuntimeError("an uncaught exception")
destroy_own_group()
print(dist.is_initialized())
'''


@pytest.mark.parametrize(("how", "left"), [("normal", "False"), ("exception", "True")])
def test_the_group_fit_initialised_is_torn_down_at_a_normal_exit(how: str, left: str, tmp_path,
                                                                 subprocess_env) -> None:
    """The group distributed_info initialises is destroyed at a normal exit, as torch
    recommends (left to the interpreter's finalisation, gloo's threads can abort the process
    after its work: SIGABRT, "terminate called without an active exception"), but not after
    an uncaught exception, when other ranks may wait in a collective."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", TEARDOWN_SCRIPT, str(tmp_path / "store"), how],
                          env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [left]


#: run by ``torchrun --nproc_per_node=2`` and by one process: fit with a hand-written guide
#: function (one ``pyro.param`` per gated layer); every rank records its trained values
FUNCTION_GUIDE_SCRIPT = '''
import json, os, sys, warnings
import pyro
import torch
from guide_functions import logit_normal_noise_guide
from pyro_prune.data import load_dataset
from pyro_prune.inference import fit
from pyro_prune.models import MLP

train = load_dataset("digits", "train")
torch.manual_seed(0)
pyro.clear_param_store()
net = MLP(64, [32], 10)
layers = list(net.noise_layers().values())
guide = logit_normal_noise_guide(net)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the criteria cannot read a guide function
    result = fit(net, train, epochs=2, batch_size=32, lr=1e-2, guide=guide, seed=0, progress=False)
with open(os.path.join(sys.argv[1], f"rank{os.environ.get('RANK', '0')}.json"), "w") as f:
    json.dump({"u_loc": pyro.param(f"{layers[0].site_name}.u_loc").tolist(),
               "losses": [r["loss"] for r in result.history], "world_size": result.config["world_size"]}, f)
'''


@pytest.mark.slow
def test_two_gloo_processes_train_a_guide_functions_params_as_one_process(tmp_path, subprocess_env) -> None:
    """A guide function's pyro.params under torchrun: broadcast from rank 0 and their gradients
    combined with the network's, so both ranks end with the same values, those of one process."""
    import os

    env = {**subprocess_env,  # the script imports the tests' guide function
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), subprocess_env["PYTHONPATH"]])}
    rank0, _ = _two_ranks(FUNCTION_GUIDE_SCRIPT, tmp_path, env)
    single = _one_process(tmp_path, env)
    assert rank0["world_size"] == 2 and single["world_size"] == 1
    assert min(abs(v) for v in rank0["u_loc"]) > 0.05  # trained
    assert rank0["u_loc"] == pytest.approx(single["u_loc"], rel=1e-4, abs=1e-5)
    assert rank0["losses"] == pytest.approx(single["losses"], rel=1e-5)
