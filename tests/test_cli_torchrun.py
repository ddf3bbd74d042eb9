"""``pyro-prune fit`` under torchrun: unchanged command on the user's own Dataset (sharded by
a DistributedSampler), rank 0 writes, a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIT = ["-m", "pyro_prune", "fit", "--data", "my_data:make_datasets", "--model", "mlp", "--method", "bmrs_n_code",
       "--epochs", "3", "--finetune-epochs", "1", "--batch-size", "32", "--lr", "1e-2", "--noise-lr", "0.1",
       "--val-fraction", "0", "--num-samples", "10", "--eval-examples", "50", "--curve-points", "2",
       "--no-progress"]


def _torchrun(out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0", *FIT, "--out", str(out)]


def _worker(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's descendant process that has ``RANK=<rank>``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo, found = [launcher], []
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            todo.append(child)
            try:
                environ = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                found.append(child)
    return min(found) if found else None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_a_killed_rank_and_a_rerun_resume_the_run(tmp_path, subprocess_env, user_data_module) -> None:
    from pyro_prune.inference import load_checkpoint

    # docs/scale_out.md's my_data.py: a map-style Dataset of the user, sharded per rank
    (tmp_path / "my_data.py").write_text((tmp_path / f"{user_data_module}.py").read_text())
    subprocess_env = {**subprocess_env,
                      "PYTHONPATH": os.pathsep.join([str(tmp_path), subprocess_env["PYTHONPATH"]])}
    out = tmp_path / "run"
    command = _torchrun(out)
    first = subprocess.Popen(command, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    checkpoint = out / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert first.poll() is None, first.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.1)
    victim = _worker(first.pid, rank=1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, err = first.communicate(timeout=240)
    assert first.returncode != 0, "the launcher should fail when a rank dies"
    saved = load_checkpoint(checkpoint)
    assert 1 <= saved["epoch"] < 4, saved["epoch"]
    assert not (out / "history.json").exists()

    done = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and done.stdout.count("run folder") == 1  # rank 0 only
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 5))
    for before, after in zip(saved["history"], history):  # resumed, not retrained
        assert before["epoch_time_s"] == after["epoch_time_s"]
        assert before["kept"] == after["kept"]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["backend"] == "gloo" and config["device"] == "cpu"
    assert config["data"]["input_shape"] == [1, 8, 8] and config["data"]["output_dim"] == 10
    from pyro_prune.run_folder import CURVE_FILE

    assert len(json.loads((out / CURVE_FILE).read_text())["bmrs_n_code"]) >= 2  # rank 0 alone
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85 and metrics["compression"] > 0.2
