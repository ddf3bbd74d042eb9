"""The CLI's promises: exit 2 and one line for every user error, no traceback; every output
file survives a kill at any moment of its write; two runs on one folder leave one complete run
and one clear refusal."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pyro_prune import _io
from pyro_prune import inspect as pa
from pyro_prune.cli import main
from pyro_prune.report import write_report
from pyro_prune.run_folder import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    CONVERTED_STATE_FILE,
    EXPORTED_PROGRAM_FILE,
    IDATA_FILE,
    METRICS_FILE,
    MODEL_FILE,
    REPORT_FILE,
)
from pyro_prune.runs import RunConfig, export_run, load_run, run_fit

TINY = ["--data", "digits", "--epochs", "1", "--finetune-epochs", "0", "--train-subset", "100",
        "--num-samples", "4", "--eval-examples", "20", "--hidden", "8", "--no-progress"]


def _tiny(**kw: Any) -> RunConfig:
    settings: dict[str, Any] = dict(data="digits", epochs=1, finetune_epochs=0, train_subset=100,
                                    num_samples=4, eval_examples=20, hidden=[8])
    return RunConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run_fit(_tiny(), out, progress=False, measure=False)
    write_report(out)
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if _io._TEMPORARY.match(p.name)]


def assert_complete(out: Path) -> None:
    """Every output of a finished run is present, loadable and of one run's settings."""
    run = load_run(out)  # config + model.pt (CRC checked) + history
    assert run.metrics and "compression" in run.metrics
    state = torch.load(_io.check_zip(out / CONVERTED_STATE_FILE), weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    program = torch.export.load(str(out / EXPORTED_PROGRAM_FILE)).module()
    example = torch.zeros(3, *run.shape.input_shape)
    assert program(example).shape == (3, run.shape.output_dim)
    assert "posterior" in pa.group_names(pa.load(out / IDATA_FILE))
    ckpt = torch.load(_io.check_zip(out / CHECKPOINT_FILE), weights_only=True)
    assert ckpt["config"]["seed"] == run.config.seed
    assert not _temporaries(out)


# ============================================================================ no traceback
def _damage_model(run: Path, tmp: Path, how: str) -> Path:
    out = _copy(run, tmp)
    path = out / MODEL_FILE
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped":
        i = data.index(b"archive/data/0") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
    else:  # a pickle that would run a command if it were unpickled without weights_only
        class Evil:
            def __reduce__(self) -> tuple[Any, ...]:
                return (os.system, (f"touch {tmp / 'pwned'}",))

        torch.save({"fc": Evil()}, path)
    return out


def _damage_posterior(run: Path, tmp: Path, how: str) -> Path:
    out = _copy(run, tmp)
    path = out / IDATA_FILE
    path.write_bytes(b"" if how == "empty" else path.read_bytes()[:5000])
    return out


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """A read-only folder (chmod does not stop root: also deny it where the checks look)."""
    folder.chmod(0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == folder and mode & os.W_OK
                        else real(p, mode, *a, **k))


Case = Callable[[Path, Path, pytest.MonkeyPatch], list[str]]


def _model_case(how: str, cmd: str) -> Case:
    return lambda run, tmp, mp: [cmd, str(_damage_model(run, tmp, how))]


def _posterior_case(how: str) -> Case:
    return lambda run, tmp, mp: ["report", str(_damage_posterior(run, tmp, how))]


USER_ERRORS: dict[str, tuple[Case, str]] = {
    "seed -1": (lambda run, tmp, mp: ["fit", *TINY, "--seed", "-1"], "--seed: must be an integer in 0..4294967295"),
    "seed 2**32": (lambda run, tmp, mp: ["fit", *TINY, "--seed", str(2**32)], "--seed"),
    "out is a file": (lambda run, tmp, mp: ["fit", *TINY, "--out", str(run / CONFIG_FILE)], "is a file, not a folder"),
    "out under a file": (lambda run, tmp, mp: ["fit", *TINY, "--out", str(run / CONFIG_FILE / "x")],
                         "lies under .*config.json, which is a file"),
    "out read-only": (lambda run, tmp, mp: (_read_only(mp, tmp), ["fit", *TINY, "--out", str(tmp)])[1],
                      "is not writable"),
    "lr diverges": (lambda run, tmp, mp: ["fit", *TINY, "--lr", "100", "--noise-lr", "100", "--out", str(tmp / "r")],
                    "loss became nan at epoch 1, step"),
    "kl-scale foo": (lambda run, tmp, mp: ["fit", *TINY, "--kl-scale", "foo", "--out", str(tmp / "r")],
                     "kl-scale must be elbo, paper, auto or a number"),
    "report read-only": (lambda run, tmp, mp: (_read_only(mp, c := _copy(run, tmp)), ["report", str(c)])[1],
                         "is not writable"),
    "export read-only": (lambda run, tmp, mp: (_read_only(mp, c := _copy(run, tmp)), ["export", str(c)])[1],
                         "is not writable"),
    "export output is a folder": (lambda run, tmp, mp: ["export", str(run), "--output", str(tmp)], "is a folder"),
    "report missing folder": (lambda run, tmp, mp: ["report", str(tmp / "none")], "does not exist"),
    **{f"model.pt {how} ({cmd})": (_model_case(how, cmd), match)
       for how, match in (("truncated", "truncated or damaged"), ("empty", "is empty"),
                          ("flipped", "fails its CRC check"), ("malicious", "refusing to load"))
       for cmd in ("report", "export")},
    **{f"posterior.nc {how}": (_posterior_case(how), "posterior.nc is truncated or damaged")
       for how in ("truncated", "empty")},
    "resume other settings": (lambda run, tmp, mp: ["fit", *TINY, "--seed", "1", "--out", str(_copy(run, tmp))],
                              "holds a run with other settings"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_no_user_error_prints_a_traceback(case: str, finished_run: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    make, match = USER_ERRORS[case]
    argv = make(finished_run, tmp_path, monkeypatch)
    try:
        code = main(argv)
    finally:
        for p in tmp_path.rglob("*"):  # undo the read-only cases so tmp_path can be removed
            if p.is_dir():
                p.chmod(0o755)
        tmp_path.chmod(0o755)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert errors[0].startswith(f"pyro-prune {argv[0]}: error: ")
    import re

    assert re.search(match, errors[0]), errors[0]
    assert not (tmp_path / "pwned").exists()


def test_a_regression_data_set_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               write_uci_yacht) -> None:
    root = tmp_path / "data"  # a synthetic uci/yacht: 6 features and a linear target with noise
    rng = np.random.default_rng(0)
    x = rng.normal(size=(308, 6))
    write_uci_yacht(root, np.column_stack([x, x @ rng.normal(size=6) + 0.1 * rng.normal(size=308)]), rng)
    out = tmp_path / "run"
    argv = ["fit", "--data", "uci/yacht", "--data-root", str(root), "--epochs", "2", "--finetune-epochs",
            "0", "--num-samples", "4", "--hidden", "8", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "test RMSE" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    metrics = json.loads((out / METRICS_FILE).read_text())
    assert metrics["test_rmse"] > 0 and "test_accuracy" not in metrics
    assert_complete(out)


# ============================================================================ kills
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and the temporary file stays behind."""


def _kill_while_writing(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make the writer of ``name`` die half-way: its temporary file truncated and left behind."""
    real = _io._fsync_file

    def fsync(path: Path) -> None:
        if path.name.startswith(f".{name}."):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            os.link(path, path.with_name(f".{name}.999999.deadbeef.tmp{Path(name).suffix}"))
            raise _Killed(name)
        real(path)

    monkeypatch.setattr(_io, "_fsync_file", fsync)


FIT_OUTPUTS = [CHECKPOINT_FILE, MODEL_FILE, CONVERTED_STATE_FILE, EXPORTED_PROGRAM_FILE, IDATA_FILE,
               CONFIG_FILE, "history.json", METRICS_FILE]
LATER_OUTPUTS = [REPORT_FILE, "history.png", "model.pt2"]


@pytest.mark.parametrize("name", FIT_OUTPUTS + LATER_OUTPUTS)
def test_a_kill_while_writing_any_output_loses_nothing(name: str, finished_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(finished_run, tmp_path)
    if name in FIT_OUTPUTS:  # an unfinished run (metrics.json is written last)
        (out / METRICS_FILE).unlink()
    if name == CHECKPOINT_FILE:  # a checkpoint is written after training epochs: retrain one
        (out / CHECKPOINT_FILE).unlink()
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _kill_while_writing(monkeypatch, name)
    with pytest.raises(_Killed):
        if name in FIT_OUTPUTS:
            run_fit(_tiny(), out, progress=False, measure=False)
        elif name == "model.pt2":
            export_run(out, "exported-program")
        else:
            write_report(out)
    assert _temporaries(out), "the simulated kill leaves its temporary file"
    written = [rel for rel in before if rel.name == name]
    for rel in written:  # the file being written is still its old, complete self
        assert (out / rel).read_bytes() == before[rel], rel
    if not written:  # or, if there was none, still absent
        assert not [p for p in out.rglob(name)], name
    monkeypatch.undo()
    if name in FIT_OUTPUTS:  # the rerun rebuilds what is missing
        run_fit(_tiny(), out, progress=False, measure=False)
        assert_complete(out)
    elif name == "model.pt2":
        program = torch.export.load(str(export_run(out, "exported-program"))).module()
        assert program(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    else:
        write_report(out)
        assert (out / "figures" / "history.png").read_bytes()[:4] == b"\x89PNG"
        assert "## Figures" in (out / REPORT_FILE).read_text()
    assert not _temporaries(out)


def test_an_interrupted_restart_is_never_half_old_half_new(finished_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = _copy(finished_run, tmp_path)
    _kill_while_writing(monkeypatch, MODEL_FILE)
    with pytest.raises(_Killed):
        run_fit(_tiny(seed=1), out, progress=False, measure=False, restart=True)
    assert json.loads((out / CONFIG_FILE).read_text())["run"]["seed"] == 1
    leftovers = [n for n in (MODEL_FILE, CONVERTED_STATE_FILE, EXPORTED_PROGRAM_FILE, IDATA_FILE,
                             METRICS_FILE, REPORT_FILE, "figures") if (out / n).exists()]
    assert leftovers == [], "the old run's outputs beside the new settings"
    monkeypatch.undo()
    run_fit(_tiny(seed=1), out, progress=False, measure=False)
    assert_complete(out)


def test_a_damaged_output_of_a_finished_run_is_rebuilt(finished_run: Path, tmp_path: Path) -> None:
    out = _copy(finished_run, tmp_path)
    (out / EXPORTED_PROGRAM_FILE).unlink()
    (out / IDATA_FILE).write_bytes((out / IDATA_FILE).read_bytes()[:1000])
    run_fit(_tiny(), out, progress=False, measure=False)
    assert_complete(out)


def test_resuming_a_damaged_checkpoint_is_refused(finished_run: Path, tmp_path: Path) -> None:
    out = _copy(finished_run, tmp_path)
    (out / METRICS_FILE).unlink()  # unfinished: the checkpoint is needed
    data = (out / CHECKPOINT_FILE).read_bytes()
    (out / CHECKPOINT_FILE).write_bytes(data[:-100])
    assert main(["fit", *TINY, "--out", str(out)]) == 2


# ============================================================================ processes
def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_runs_on_one_folder_leave_one_complete_run_and_one_refusal(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "pyro_prune", "fit", *TINY, "--epochs", "3", "--out", str(out)]
    procs = [subprocess.Popen([*argv, "--seed", str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    winner = [seed for seed, (code, _) in zip((0, 1), results) if code == 0][0]
    refusal = [err for code, err in results if code == 2][0]
    assert "Traceback" not in refusal
    last = refusal.strip().splitlines()[-1]
    assert "in use by pid" in last and " on host " in last and "started " in last, refusal
    assert json.loads((out / CONFIG_FILE).read_text())["run"]["seed"] == winner
    assert_complete(out)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rng = random.Random(19)
    argv = [sys.executable, "-m", "pyro_prune", "fit", *TINY, "--epochs", "2", "--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 240
    while not (out / CHECKPOINT_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 3.0))  # somewhere in training, conversion or the writes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_fit(_tiny(epochs=2), out, progress=False, measure=False)
    assert_complete(out)
