"""Pruning decisions under torchrun: Bayes-factor pruning and the W2 search agree on every rank."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_two_gloo_processes_make_the_same_pruning_decisions(tmp_path, subprocess_env) -> None:
    """BayesFactorPruning (Laplace gate; random candidates) decides on rank 0 and broadcasts
    masks, weights and the candidate generator; W2 search after the fit finds one mask."""
    pytest.importorskip("asdl")  # the Laplace evidence (the laplace extra)
    script = tmp_path / "decide.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", str(script), str(tmp_path)]
    done = subprocess.run(command, env={**subprocess_env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    for case in ("laplace_magnitude", "random"):
        assert rank0[case]["world_size"] == 2
        assert rank0[case]["accepted"] == [1]  # each pruned once: the same weights on both ranks
    assert rank0["laplace_magnitude"]["decision"][1] > 0  # the Laplace gate opened
    assert rank0["random"]["decision"][2] == pytest.approx(0.5)
    assert sum(rank0["w2"]["kept"].values()) < 64  # the W2 search removed neurons
