from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_prune import cli, run_folder, runs
from pyro_prune import inspect as pa
from pyro_prune.demo import DemoConfig, run_demo

TINY = ["--data", "digits", "--epochs", "2", "--finetune-epochs", "1", "--num-samples", "8",
        "--no-progress", "--seed", "3"]


FITTED_EXTRA = ("--curve-points", "2", "--eval-examples", "100", "--noise-lr", "0.05")


def _fit_args(out: Path, *extra: str) -> list[str]:
    return ["fit", "--model", "mlp", "--hidden", "16", "--method", "snr", *TINY,
            "--out", str(out), *extra]


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--help"], ["report", "--help"],
                                  ["export", "--help"], ["demo", "--help"], ["--version"]])
def test_help_everywhere(argv, capsys) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "pyro-prune" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["fit", "--model", "alexnet", "--data", "digits"], "invalid choice: 'alexnet'"),
    (["fit", "--method", "magic", "--data", "digits"], "invalid choice: 'magic'"),
    (["fit", "--data", "digits", "--epochs", "0"], "--epochs: must be a positive integer, got '0'"),
    (["fit", "--data", "digits", "--epochs", "-3"], "--epochs: must be a positive integer"),
    (["fit", "--data", "digits", "--epochs", "many"], "--epochs: must be a positive integer"),
    (["fit", "--data", "digits", "--lr", "0"], "--lr: must be a positive number"),
    (["fit", "--data", "digits", "--noise-lr", "-1"], "--noise-lr: must be a positive number"),
    (["fit", "--data", "digits", "--val-fraction", "1.5"], "--val-fraction"),
    (["fit", "--data", "digits", "--finetune-kl-scale", "cold"], "finetune-kl-scale must be 'train'"),
    (["fit", "--data", "digits", "--hidden", "10,x"], "--hidden"),
    (["fit", "--model", "mlp"], "--data"),
    (["export", "somewhere", "--format", "pickle"], "invalid choice: 'pickle'"),
    (["demo", "--data", "cifar100"], "invalid choice: 'cifar100'"),
    (["train"], "invalid choice: 'train'"),
    ([], "required: COMMAND"),
])
def test_bad_arguments_exit_2_with_one_line(argv, needle, error_line) -> None:
    assert cli.main(argv) == 2
    line = error_line()
    assert line.startswith("pyro-prune")
    assert needle in line


def test_unknown_and_missing_datasets(tmp_path, monkeypatch, error_line) -> None:
    assert cli.main(["fit", "--data", "imagenet", "--out", str(tmp_path / "a")]) == 2
    assert "data set 'imagenet' not available: unknown data set" in error_line()
    assert not (tmp_path / "a").exists()  # nothing written for a bad argument
    monkeypatch.delenv("PYRO_PRUNE_DATA", raising=False)
    assert cli.main(["fit", "--data", "mnist", "--out", str(tmp_path / "b")]) == 2
    assert "PYRO_PRUNE_DATA" in error_line()
    assert cli.main(["fit", "--data", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    line = error_line()
    assert "data set 'mnist' not available" in line


def test_model_and_data_mismatch(tmp_path, error_line) -> None:
    assert cli.main(["fit", "--model", "lenet5", "--hidden", "8", *TINY, "--out", str(tmp_path)]) == 2
    assert "--hidden applies to --model mlp only" in error_line()
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in error_line()
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", str(tmp_path / "empty")]) == 2
    assert "config.json not found" in error_line()


def test_registries_drive_the_choices() -> None:
    from pyro_prune.reduction import CRITERIA

    assert {"mlp", "lenet5"} <= set(cli.MODELS)
    assert {"none", "bmrs_n", "bmrs_u", "snr"} <= set(cli.METHODS)
    for spec in cli.METHODS.values():
        assert spec.criterion is None or spec.criterion in CRITERIA
    assert "l2" not in cli.METHODS  # needs a target compression, cannot decide on its own
    assert cli.METHODS["gaussian_bmr"].weights == "gaussian"
    assert {f.value for f in cli.ExportFormat} == {"exported-program", "torchscript", "state-dict", "onnx"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mlp"
    assert cli.main(_fit_args(out, *FITTED_EXTRA)) == 0
    return out


def test_fit_writes_a_complete_run_folder(fitted) -> None:
    for name in (run_folder.CONFIG_FILE, run_folder.HISTORY_FILE, run_folder.METRICS_FILE, run_folder.MODEL_FILE,
                 run_folder.CONVERTED_STATE_FILE, run_folder.EXPORTED_PROGRAM_FILE, run_folder.IDATA_FILE, run_folder.CURVE_FILE,
                 run_folder.CHECKPOINT_FILE):
        assert (fitted / name).is_file(), name
    config = json.loads((fitted / run_folder.CONFIG_FILE).read_text())
    assert config["run"]["method"] == "snr" and config["run"]["epochs"] == 2
    assert config["run"]["noise_lr"] == 0.05
    assert config["data"]["input_shape"] == [1, 8, 8]
    history = json.loads((fitted / run_folder.HISTORY_FILE).read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    metrics = json.loads((fitted / run_folder.METRICS_FILE).read_text())
    assert 0.0 <= metrics["compression"] < 1.0
    assert metrics["params_pruned"] <= metrics["params_full"] and metrics["macs_pruned"] <= metrics["macs_full"]
    assert metrics["speedup"] > 0 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["chance_note"] is None  # it learned: no note
    idata = pa.load(fitted / run_folder.IDATA_FILE)
    assert idata.posterior["fc1_theta"].shape == (1, 8, 16)
    assert idata.log_likelihood["obs"].shape == (1, 8, 100)  # --eval-examples
    assert metrics["test_accuracy"] * 359 == pytest.approx(round(metrics["test_accuracy"] * 359))
    assert idata.posterior.attrs["method"] == "snr"
    assert "snr" in list(idata.reduction["criterion"].values)
    assert idata.prior["fc1_theta"].shape == (1, 8, 16)  # the structures' priors
    calibration = json.loads((fitted / run_folder.CALIBRATION_FILE).read_text())
    assert set(calibration) == {"restored", "pruned"}
    assert sum(calibration["pruned"]["count"]) == 100
    assert metrics["ece_pruned"] == calibration["pruned"]["ece"] and 0 <= metrics["ece_pruned"] <= 1


def test_exported_program_matches_the_model_at_any_batch_size(fitted) -> None:
    run = runs.load_run(fitted)
    program = torch.export.load(str(fitted / run_folder.EXPORTED_PROGRAM_FILE)).module()
    for batch in (1, 5):
        x = torch.randn(batch, 1, 8, 8)
        torch.testing.assert_close(program(x), run.model.predict(x), rtol=1e-4, atol=1e-4)


def test_rerunning_resumes_and_other_settings_are_refused(fitted, capsys, error_line) -> None:
    before = json.loads((fitted / run_folder.HISTORY_FILE).read_text())
    written = {n: (fitted / n).stat().st_mtime_ns for n in (run_folder.METRICS_FILE, run_folder.IDATA_FILE)}
    capsys.readouterr()
    assert cli.main(_fit_args(fitted, *FITTED_EXTRA)) == 0
    after = json.loads((fitted / run_folder.HISTORY_FILE).read_text())
    assert after == before  # nothing retrained
    assert "finished: reading it back" in capsys.readouterr().err  # nor re-evaluated
    assert written == {n: (fitted / n).stat().st_mtime_ns for n in written}
    capsys.readouterr()
    assert cli.main(_fit_args(fitted, *FITTED_EXTRA, "--epochs", "5")) == 2
    line = error_line()
    assert "other settings" in line and "epochs: 2 there vs 5 now" in line
    assert cli.main(_fit_args(fitted)) == 2  # --noise-lr left out: another setting too
    assert "noise_lr" in error_line()


def test_interrupted_fit_continues_where_it_stopped(tmp_path, monkeypatch) -> None:
    fit_module = sys.modules["pyro_prune.inference.fit"]  # fit saves through its own name
    original = fit_module.save_checkpoint
    calls = {"n": 0}

    def crash_after_first(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_checkpoint", crash_after_first)
    assert cli.main(_fit_args(tmp_path / "a")) == 130
    assert calls["n"] == 1
    monkeypatch.setattr(fit_module, "save_checkpoint", original)
    assert cli.main(_fit_args(tmp_path / "a")) == 0
    assert cli.main(_fit_args(tmp_path / "b")) == 0
    resumed = json.loads((tmp_path / "a" / run_folder.HISTORY_FILE).read_text())
    straight = json.loads((tmp_path / "b" / run_folder.HISTORY_FILE).read_text())
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for r1, r2 in zip(resumed, straight):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-6)
        assert r1["kept"] == r2["kept"]


def test_report(fitted) -> None:
    assert cli.main(["report", str(fitted)]) == 0
    text = (fitted / run_folder.REPORT_FILE).read_text()
    assert text.startswith("# pyro-prune run: mlp / snr on digits")
    for fig in ("history.png", "theta_forest.png", "delta_f.png", "accuracy_vs_compression.png",
                "widths.png", "summary.png", "calibration.png"):
        assert f"figures/{fig}" in text
        assert (fitted / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    assert "| accuracy |" in text and "elpd_loo" in text and "ECE (pruned)" in text
    assert "The rule of snr per structure (removed below 1)" in text  # the run's own criterion


@pytest.mark.parametrize("fmt", ["exported-program", "torchscript", "state-dict", "onnx"])
def test_export(fitted, fmt, tmp_path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
    out = tmp_path / f"model.{fmt}"
    assert cli.main(["export", str(fitted), "--format", fmt, "--output", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
    run = runs.load_run(fitted)
    x = torch.randn(3, 1, 8, 8)
    if fmt == "exported-program":
        program = torch.export.load(str(out)).module()
        torch.testing.assert_close(program(x), run.model.predict(x), rtol=1e-4, atol=1e-4)
    elif fmt == "torchscript":
        torch.testing.assert_close(torch.jit.load(str(out))(x), run.model.predict(x), rtol=1e-4, atol=1e-4)
    elif fmt == "state-dict":
        from pyro_prune.convert import to_deterministic

        net = to_deterministic(run.model)
        net.load_state_dict(torch.load(out, weights_only=True))
        torch.testing.assert_close(net(x), run.model.predict(x), rtol=1e-4, atol=1e-4)
    else:
        import onnx

        onnx.checker.check_model(onnx.load(str(out)))


def test_lenet_with_bmrs_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "lenet"
    assert cli.main(["fit", "--model", "lenet5", "--method", "bmrs_n", *TINY, "--out", str(out)]) == 0
    # 2 epochs of 18 steps are too few to prune: one plain line says so before training
    err = capsys.readouterr().err
    lines = err.splitlines()
    warned = [i for i, line in enumerate(lines) if "optimizer steps up to its last pruning epoch" in line]
    assert len(warned) == 1 and "Traceback" not in err and "PruningStepsWarning" not in err
    line = lines[warned[0]]
    assert line.startswith("warning: this pruning run takes 36 optimizer steps ")
    assert line.endswith("; on the command line: --epochs, --batch-size, --noise-lr")
    assert lines[warned[0] - 1].startswith("fit lenet5 on digits with bmrs_n")  # before training
    idata = pa.load(out / run_folder.IDATA_FILE)
    assert idata.posterior["conv2_theta"].dims == ("chain", "draw", "conv2_channel")
    metrics = json.loads((out / run_folder.METRICS_FILE).read_text())
    from pyro_prune.convert import count_macs, to_deterministic
    from pyro_prune.models import LeNet5

    assert metrics["macs_full"] == count_macs(to_deterministic(LeNet5(1, 10, 8)), (1, 8, 8))


def test_python_dash_m(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pyro_prune", "fit", "--data", "digits", "--epochs", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "pyro-prune fit: error: argument --epochs: must be a positive integer, got '0'"


def test_demo_runs_end_to_end(tmp_path, capsys) -> None:
    cfg = DemoConfig(out=tmp_path / "demo", epochs=1, finetune_epochs=0, num_samples=6, curve_points=2,
                     models=("mlp",), methods=("none", "bmrs_n"), hidden=[12])
    result = run_demo(cfg, progress=False)
    printed = capsys.readouterr().out
    assert "| model | method | accuracy |" in printed and "finished in" in printed
    assert [(r["model"], r["method"]) for r in result.rows] == [("mlp", "none"), ("mlp", "bmrs_n")]
    assert result.rows[0]["lpd_diff"] == 0.0
    assert result.rows[1]["lpd"].count("+-") == 1 and math.isfinite(result.rows[1]["lpd_diff_se"])
    assert result.report.is_file() and all(p.is_file() for p in result.figures)
    assert (tmp_path / "demo" / "mlp-bmrs_n" / run_folder.REPORT_FILE).is_file()
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert len(summary["rows"]) == 2
    # a finished demo run again recomputes nothing: every run is read back, the curves too
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*.json")
               if p.name in (run_folder.METRICS_FILE, "mlp_curves.json")}
    assert len(written) == 3
    again = run_demo(cfg, progress=False)
    assert [r["test_accuracy"] for r in again.rows] == [r["test_accuracy"] for r in result.rows]
    assert written == {p: p.stat().st_mtime_ns for p in written}


def test_names_that_moved_out_of_the_cli_still_import_with_a_warning() -> None:
    import importlib

    fresh = importlib.reload(cli)  # the warning is given once per name and module object
    with pytest.warns(DeprecationWarning, match=r"pyro_prune.cli.load_run moved to pyro_prune.runs.load_run"):
        assert fresh.load_run is runs.load_run
    with pytest.warns(DeprecationWarning, match="pyro_prune.run_folder"):
        assert fresh.CONFIG_FILE == run_folder.CONFIG_FILE
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        fresh.nothing_here  # noqa: B018


#: what an older ``fit`` did not write into metrics.json
LATER_KEYS = ("params_full", "params_pruned", "macs_full", "macs_pruned", "compression", "kept",
              "structures", "w2", "w2_empty", "w2_normalized", "test_lpd", "test_lpd_mean",
              "test_lpd_full", "test_lpd_full_mean", "test_lpd_diff", "test_lpd_diff_se",
              "test_lpd_n", "elpd_loo", "elpd_loo_se", "p_loo", "pareto_k_max", "pareto_k_bad",
              "loo_n", "ece_restored", "ece_pruned", "latency_rounds")


def test_report_of_an_older_run_folder(fitted, tmp_path) -> None:
    """Rebuilt from model.pt where it can (summary, widths, decision figure); the missing
    measurements named (pyro_prune.older_runs)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(fitted, out)
    complete = json.loads((out / run_folder.METRICS_FILE).read_text())
    # the folder as an older release left it: fewer metrics, a latency timed in a fixed order,
    # no calibration, an InferenceData whose reduction group lacks the run's criterion (snr)
    old = {k: v for k, v in complete.items() if k not in LATER_KEYS}
    (out / run_folder.METRICS_FILE).write_text(json.dumps(old))
    (out / run_folder.CALIBRATION_FILE).unlink()
    model = runs.load_run(out).model
    pa.save(pa.to_inference_data(model, num_samples=4, criteria=["bmrs"]), out / run_folder.IDATA_FILE)

    assert cli.main(["report", str(out)]) == 0
    text = (out / run_folder.REPORT_FILE).read_text()
    for fig in ("summary.png", "widths.png", "delta_f.png"):  # rebuilt from model.pt
        assert f"figures/{fig}" in text and (out / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    assert "figures/calibration.png" not in text
    assert ("recomputed from `model.pt` (absent from `metrics.json`): params_full, params_pruned, "
            "macs_full, macs_pruned, compression, kept structures") in text
    assert ("not rebuilt by the report (they need the test data or timing): the W2 shift of the "
            "posterior predictive, the test-set log predictive density, PSIS-LOO, calibration") in text
    assert "timed in a fixed order by an older release" in text
    assert "Recomputed from model.pt (the saved InferenceData predates the run's criterion)" in text
    assert "The rule of snr per structure" in text
    # the recomputed sizes are those fit measured
    assert (f"| {complete['compression']:.3f} | {complete['params_full']} | {complete['params_pruned']} "
            f"| {complete['macs_full']} | {complete['macs_pruned']} |") in text


@pytest.mark.parametrize("n,batch,expected", [(300, 64, 161), (1150, 64, 45), (1150, 32, 23), (3000, 64, 20),
                                              (20000, 64, 20)])
def test_default_epochs_give_the_noise_three_times_the_steps_it_needs(n: int, batch: int, expected: int) -> None:
    """``--epochs`` not given: 20, or enough for 3 x 267 = 801 optimizer steps at the default
    noise_lr (300 examples at batch 64: 5 steps an epoch, 161 epochs; the digits training
    split, 1150 examples: 18 steps, 45 epochs, at batch 32 36 steps, 23 epochs; 3000: 47
    steps, 18 epochs would do, 20)."""
    x, y = torch.randn(n, 64), torch.randint(0, 10, (n,))
    shape = runs.DataShape(name="t", input_shape=(64,), output_dim=10, task="classification")
    cfg = runs.RunConfig(model="mlp", data="t", batch_size=batch)
    epochs, why = runs.default_epochs(cfg, torch.utils.data.TensorDataset(x, y), shape)
    assert epochs == expected
    assert (why is None) == (expected == runs.DEFAULT_EPOCHS)
    if why is not None:
        assert f"epochs: {expected}, not 20" in why and "267 steps" in why and "--epochs" in why
    none = runs.RunConfig(model="mlp", data="t", batch_size=batch, method="none")  # nothing to prune
    assert runs.default_epochs(none, torch.utils.data.TensorDataset(x, y), shape) == (20, None)


@pytest.mark.skipif(not __import__("os").environ.get("PYRO_PRUNE_DATA"), reason="needs the real data sets")
def test_fit_on_a_small_data_set_prunes_on_the_defaults(tmp_path: Path, capsys) -> None:
    """UCI concrete (742 training rows after the validation split, 12 steps an epoch at batch
    64): 20 epochs (240 steps) removed none of the 200 neurons; the default gives 67."""
    assert cli.main(["fit", "--model", "mlp", "--data", "uci/concrete", "--no-progress",
                     "--num-samples", "8", "--out", str(tmp_path)]) == 0
    said = capsys.readouterr()
    assert "epochs: 67, not 20" in said.err and "warning" not in said.err + said.out
    config = json.loads((tmp_path / run_folder.CONFIG_FILE).read_text())
    assert config["run"]["epochs"] == 67
    metrics = json.loads((tmp_path / run_folder.METRICS_FILE).read_text())
    assert metrics["compression"] > 0.5
    assert cli.main(["fit", "--model", "mlp", "--data", "uci/concrete", "--no-progress",
                     "--num-samples", "8", "--out", str(tmp_path)]) == 0  # the same run: read back
    assert "finished: reading it back" in capsys.readouterr().err
