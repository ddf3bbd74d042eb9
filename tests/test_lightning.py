"""pyro_prune.lightning on one process: the default recipe of fit, its KL weights, its pruning."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.utils.data import DataLoader

from pyro_prune.data import load_dataset
from pyro_prune.inference.optim import DEFAULT_NOISE_LR
from pyro_prune.models import MLP

L = pytest.importorskip("lightning")

from pyro_prune.lightning import PruningCallback, PruningModule, default_finetune_epochs  # noqa: E402


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_defaults_are_fits_recipe_and_prune() -> None:
    """Defaults only (but the epochs): the KL weight is warmed up, tempered, then the ELBO's
    for fine-tuning, exactly as ``fit`` sets it, and structures are removed."""
    train = load_dataset("digits", "train")
    L.seed_everything(0)
    model = MLP(64, [32], 10)
    module = PruningModule(model, num_data=len(train), lr=1e-2)
    assert module.noise_lr == DEFAULT_NOISE_LR
    pruning = PruningCallback(finetune_epochs=1, kl_warmup_epochs=2)
    assert pruning.schedule.criterion.name == "bmrs"
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=6, callbacks=[pruning], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True))
    k = len(train) / 32  # "auto" = "paper": num_data / num_structures
    assert [row["kl_scale"] for row in pruning.history] == pytest.approx(
        [1.0, k ** 0.5, k, k, k, 1.0])
    assert [row["phase"] for row in pruning.history][-1] == "finetune"
    assert module.loss_fn.kl_scale == pytest.approx(1.0)
    assert pruning.history[-1]["compression"] > 0.2
    report = pruning.report  # the line fit ends with, for the same run
    assert report.criterion == "bmrs" and report.removed == 32 - pruning.history[-1]["kept"]["fc1_gate"]
    assert str(report).startswith(f"bmrs: removed {report.removed} of 32 linear neurons (dF from ")
    x = train.tensors[0][:64]
    assert torch.allclose(pruning.converted(x), model.predict(x), atol=1e-4)


@pytest.mark.parametrize(("max_epochs", "expected"), [
    (None, 0), (1, 0), (2, 1), (6, 1), (7, 2), (13, 3), (20, 4), (60, 10), (1000, 10)])
def test_default_finetune_epochs_is_a_sixth_of_max_epochs(max_epochs, expected) -> None:
    """The BMRS protocol's proportion: 60 -> 50 + 10, 13 -> the reduced 10 + 3; at most
    ContinuousPruning's 10, at least one pruning epoch, none when unbounded."""
    assert default_finetune_epochs(max_epochs) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_pruning_callback_refuses_a_bad_finetune_epochs(bad) -> None:
    with pytest.raises(ValueError, match=r"finetune_epochs must be an int >= 0 or None"):
        PruningCallback(finetune_epochs=bad)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_callback_defaults_fine_tune_the_last_sixth_at_the_elbo_weight(caplog) -> None:
    """PruningCallback() with nothing set, as fit's ContinuousPruning() fine-tunes: the last
    ceil(12 / 6) = 2 of 12 epochs remove nothing and train at the ELBO's weight; said in a line."""
    train = load_dataset("digits", "train")
    L.seed_everything(0)
    model = MLP(64, [32], 10)
    module = PruningModule(model, num_data=len(train), lr=1e-2)
    pruning = PruningCallback()
    with caplog.at_level("INFO", logger="pyro_prune"):
        _trainer(12, [pruning]).fit(module, DataLoader(train, batch_size=32, shuffle=True))
    assert pruning.schedule.extra_epochs == 2
    assert "fine-tuning: the last 2 of 12 epochs" in caplog.text
    assert [row["phase"] for row in pruning.history] == ["prune"] * 10 + ["finetune"] * 2
    k = len(train) / 32
    assert [row["kl_scale"] for row in pruning.history[-2:]] == pytest.approx([1.0, 1.0])
    assert module.loss_fn.kl_scale == pytest.approx(1.0) and k > 1
    assert pruning.history[-1]["removed"] == 0 and pruning.history[-1]["compression"] > 0.2
    assert pruning.history[-1]["kept"] == pruning.history[-3]["kept"]


def _trainer(max_epochs: int, callbacks: list, **options) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     **options)


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_trains_an_autoguide_and_prunes_on_the_defaults(caplog, capsys) -> None:
    """docs/scale_out.md's recipe, guide=AutoNormal(model): the guide's parameters train (the
    model's own posterior is left out of training and given back after it), the criterion
    follows the guide (bmrs_u4, said in one line), structures are removed, the run ends with
    the pruning report, the page prints what it says, the converted network predicts as the
    model does, and the module's state restores the guide."""
    from pyro.infer.autoguide import AutoNormal
    from test_docs_scale_out import PAGE, run_block

    from pyro_prune.inference.guides import attached_guide

    with caplog.at_level("INFO", logger="pyro_prune"):
        recipe = run_block("lightning_autoguide.py")
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"It prints `{printed}`" in PAGE.read_text()
    model, guide, module, pruning = (recipe[k] for k in ("model", "guide", "module", "pruning"))
    assert attached_guide(model) is guide and module.guide is guide
    assert pruning.schedule.criterion.name == "bmrs_u4"
    assert any("criterion: bmrs_u4, the default under a Gaussian autoguide (AutoNormal" in r.message
               for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if r.name == "pyro_prune"][-1] == str(pruning.report)
    assert str(pruning.report).startswith("bmrs_u4: removed ")
    assert pruning.history[-1]["compression"] > 0.2
    untrained = MLP(64, [100, 100], 10)  # the noise layers' own posterior starts at constants
    for name, value in untrained.state_dict().items():
        if name.endswith(("loc", "log_scale")):  # the model's own posterior did not train
            assert torch.equal(model.state_dict()[name], value), name
    assert all(p.requires_grad for p in model.parameters())  # and is trainable again
    x, y = recipe["test"].tensors
    assert torch.allclose(pruning.converted(x), model.predict(x), atol=1e-4)
    assert (model.predict(x).argmax(-1) == y).float().mean() > 0.9
    # the module's state holds the guide's parameters: a fresh module built alike loads them
    fitted, state = model.predict(x), {k: v.clone() for k, v in module.state_dict().items()}
    pyro.clear_param_store()  # else the new AutoNormal takes the fitted one's values (warned)
    fresh_model = MLP(64, [100, 100], 10)
    fresh = PruningModule(fresh_model, num_data=len(recipe["train"]), guide=AutoNormal(fresh_model),
                          example_batch=recipe["train"].tensors)
    assert not torch.allclose(fresh_model.predict(x), fitted, atol=1e-2)  # the guide's start
    fresh.load_state_dict(state)
    assert torch.allclose(fresh_model.predict(x), fitted, atol=1e-6)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
def test_lightning_copies_an_autoguides_gaussian_weights_into_the_layers() -> None:
    """Gaussian weights under AutoNormal: validation, the decision and the conversion read
    the guide's posterior of the weights (copied into the layers, as fit does)."""
    from pyro.infer.autoguide import AutoNormal

    from pyro_prune.inference.guides import init_to_model
    from pyro_prune.models.bayesian import BayesianLayer

    pyro.clear_param_store()
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    L.seed_everything(0)
    model = MLP(64, [32], 10, weights="gaussian")
    guide = AutoNormal(model, init_loc_fn=init_to_model(model))
    module = PruningModule(model, num_data=len(train), lr=1e-2, guide=guide, example_batch=train.tensors)
    layers = [m for m in model.stochastic_modules().values() if isinstance(m, BayesianLayer)]
    before = [layer.weight_loc.detach().clone() for layer in layers]
    pruning = PruningCallback(finetune_epochs=1)
    trainer = _trainer(4, [pruning])
    trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True), DataLoader(test, batch_size=512))
    assert len(layers) == 2
    for layer, start in zip(layers, before):
        loc, scale = guide._get_loc_and_scale(f"{layer.site_name}.weight")
        assert not torch.allclose(layer.weight_loc, start, atol=1e-3)  # trained, and copied
        assert torch.allclose(layer.weight_loc, loc.reshape(layer.weight_loc.shape))
        assert torch.allclose(layer.weight_log_scale.exp(), scale.reshape(layer.weight_loc.shape))
    x, y = test.tensors
    accuracy = float((model.predict(x).argmax(-1) == y).float().mean())
    assert accuracy > 0.85 and float(trainer.callback_metrics["val_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
    assert torch.allclose(pruning.converted(x), model.predict(x), atol=1e-4)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_lightning_refuses_a_guide_it_cannot_train_and_leaves_the_model_as_it_was() -> None:
    from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal

    from pyro_prune.inference.guides import attached_guide, init_to_model

    pyro.clear_param_store()
    train = load_dataset("digits", "train")
    model = MLP(64, [16], 10)
    with pytest.raises(ValueError, match=r"AutoNormal has not been run yet.*example_batch=\(x, y\)"):
        PruningModule(model, num_data=len(train), guide=AutoNormal(model))
    other = MLP(64, [16], 10)
    with pytest.raises(ValueError, match="autoguide built on another MLP"):
        PruningModule(model, num_data=len(train), guide=AutoNormal(other), example_batch=train.tensors)
    with pytest.raises(TypeError, match="guide must be a torch.nn.Module"):
        PruningModule(model, num_data=len(train), guide=lambda x, y=None: None, example_batch=train.tensors)
    with pytest.raises(ValueError, match="example_batch must be a pair"):
        PruningModule(model, num_data=len(train), guide=AutoNormal(model), example_batch=train.tensors[0])
    # one joint Normal over sites the default KL weight weights differently
    gaussian = MLP(64, [16], 10, weights="gaussian")
    before = {k: v.clone() for k, v in gaussian.state_dict().items()}
    with pytest.raises(ValueError, match="the KL weights differ"):
        PruningModule(gaussian, num_data=len(train), example_batch=train.tensors,
                      guide=AutoDiagonalNormal(gaussian, init_loc_fn=init_to_model(gaussian)))
    assert attached_guide(gaussian) is None
    assert all(torch.equal(before[k], v) for k, v in gaussian.state_dict().items())
    # a point posterior under the default criterion (BMR): refused when training starts
    point = AutoDelta(model, init_loc_fn=init_to_model(model))
    module = PruningModule(model, num_data=len(train), guide=point, example_batch=train.tensors)
    with pytest.raises(TypeError, match="AutoDelta"):
        _trainer(1, [PruningCallback()]).fit(module, DataLoader(train, batch_size=64))
    assert attached_guide(model) is point


#: run by Lightning's ``ddp`` strategy (two processes): an autoguide, DDP's own defaults
DDP_AUTOGUIDE = '''
import json, os, sys
import lightning as L
from torch.utils.data import DataLoader
from pyro.infer.autoguide import AutoNormal
from pyro_prune.data import load_dataset
from pyro_prune.lightning import PruningCallback, PruningModule
from pyro_prune.models import MLP

train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
L.seed_everything(0)
model = MLP(64, [100, 100], 10)
guide = AutoNormal(model)
module = PruningModule(model, num_data=len(train), lr=1e-2, guide=guide, example_batch=train.tensors)
pruning = PruningCallback(finetune_epochs=1)
trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=12, callbacks=[pruning],
                    logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(module, DataLoader(train, batch_size=16, shuffle=True), DataLoader(test, batch_size=512))
os.makedirs(sys.argv[1], exist_ok=True)
with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.json"), "w") as f:
    json.dump({"kept": pruning.history[-1]["kept"], "compression": pruning.history[-1]["compression"],
               "criterion": pruning.schedule.criterion.name,
               "guide": {k: v.tolist() for k, v in guide.state_dict().items()},
               "val_accuracy": float(trainer.callback_metrics["val_accuracy"])}, f)
'''


@pytest.mark.slow
def test_lightning_ddp_trains_an_autoguide_with_ddps_defaults(tmp_path, subprocess_env) -> None:
    """strategy="ddp" (no find_unused_parameters) with AutoNormal: the model's own posterior,
    which the guide replaces, is not trained, so DDP runs; both ranks end with the same
    guide and the same structures."""
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_autoguide.py"
    script.write_text(DDP_AUTOGUIDE)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], env=subprocess_env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["criterion"] == "bmrs_u4"
    assert ranks[0]["compression"] > 0.2 and ranks[0]["val_accuracy"] > 0.9


class _StopAfter(L.Callback):
    """Ends training after epoch ``epoch``, as an interrupted run would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            trainer.should_stop = True


class _AtStart(L.Callback):
    """Records the guide's parameters when training (re)starts."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.guide = {k: v.detach().clone() for k, v in pl_module.guide.state_dict().items()}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_lightning_resumes_an_autoguide_run_from_its_checkpoint(tmp_path) -> None:
    """An autoguide run stopped after 3 of 6 epochs and resumed with ``ckpt_path`` starts
    again from the guide it had fitted (a new AutoNormal, built as before, takes the
    checkpoint's values) and the pruning schedule's state, and ends where the run that was
    never stopped ends, up to the data order (Lightning does not restore the shuffling)."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from pyro.infer.autoguide import AutoNormal

    train = load_dataset("digits", "train")

    def run(folder, *, stop=None, resume=None):
        L.seed_everything(0)
        pyro.clear_param_store()
        model = MLP(64, [100, 100], 10)
        module = PruningModule(model, num_data=len(train), lr=1e-2, guide=AutoNormal(model),
                               example_batch=train.tensors)
        pruning, start = PruningCallback(finetune_epochs=1), _AtStart()
        callbacks = [pruning, start, ModelCheckpoint(dirpath=folder, save_last=True)]
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=6, logger=False,
                            callbacks=callbacks + ([_StopAfter(stop)] if stop else []),
                            enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True), ckpt_path=resume)
        return pruning, start

    full, _ = run(tmp_path / "full")
    stopped, _ = run(tmp_path / "stopped", stop=3)
    assert len(stopped.history) == 3
    saved = torch.load(tmp_path / "stopped" / "last.ckpt", weights_only=True)
    resumed, start = run(tmp_path / "stopped", resume=tmp_path / "stopped" / "last.ckpt")
    for name, value in start.guide.items():
        assert torch.equal(value, saved["state_dict"][f"guide.{name}"]), name
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4, 5, 6]  # the history goes on
    assert [row["phase"] for row in resumed.history][-1] == "finetune"
    assert resumed.history[-1]["compression"] > 0.15 and full.history[-1]["compression"] > 0.15
    assert abs(resumed.history[-1]["compression"] - full.history[-1]["compression"]) < 0.05


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:pruning would empty")
@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_lightning_prunes_a_plain_torch_cnn_under_an_autoguide_on_the_defaults() -> None:
    """A CNN as its author writes it, bayesianized (noise on its convolutions and Linear
    layers), trained by Lightning under AutoNormal with nothing but the callback's defaults:
    channels and neurons are removed, the accuracy holds, the converted network predicts as
    the model does."""
    from pyro.infer.autoguide import AutoNormal
    from torch import nn
    from torch.utils.data import TensorDataset

    from pyro_prune.inference.guides import init_to_model
    from pyro_prune.models import bayesianize

    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    x, y = train.tensors[0].reshape(-1, 1, 8, 8), train.tensors[1]
    xt, yt = test.tensors[0].reshape(-1, 1, 8, 8), test.tensors[1]
    L.seed_everything(0)
    pyro.clear_param_store()
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
    model = bayesianize(cnn, example_input=x[:2], noise_on=(nn.Linear, nn.Conv2d))
    guide = AutoNormal(model, init_loc_fn=init_to_model(model))
    module = PruningModule(model, num_data=len(x), lr=1e-2, guide=guide, example_batch=(x, y))
    pruning = PruningCallback()
    trainer = _trainer(20, [pruning])
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True))
    assert pruning.schedule.criterion.name == "bmrs_u4"
    kept = pruning.history[-1]["kept"]
    assert sum(kept.values()) < 16 + 32 + 64 and pruning.history[-1]["compression"] > 0.2
    with torch.no_grad():
        predicted = model.predict(xt)
        assert (predicted.argmax(-1) == yt).float().mean() > 0.93
        assert torch.equal(pruning.converted(xt).argmax(-1), predicted.argmax(-1))


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated")
@pytest.mark.filterwarnings("ignore:You defined a `validation_step`")
def test_lightning_prunes_a_hugging_face_bert_under_an_autoguide_on_the_defaults() -> None:
    """A tiny Hugging Face BERT (random weights, token inputs), bayesianized, trained by
    Lightning under AutoNormal on the callback's defaults: neurons are removed, the task is
    learned, the converted network predicts as the model does."""
    import foreign_networks as foreign
    from pyro.infer.autoguide import AutoNormal
    from torch.utils.data import TensorDataset

    from pyro_prune.models import bayesianize

    L.seed_everything(0)
    pyro.clear_param_store()
    ids = torch.randint(0, 50, (512, 12))
    labels = (ids[:, 0] < 25).long()
    model = bayesianize(foreign.hf_bert_logits(), example_input=ids[:2])
    module = PruningModule(model, num_data=len(ids), lr=1e-2, guide=AutoNormal(model), example_batch=(ids, labels))
    pruning = PruningCallback(finetune_epochs=1)
    _trainer(15, [pruning]).fit(module, DataLoader(TensorDataset(ids, labels), batch_size=32, shuffle=True))
    assert pruning.schedule.criterion.name == "bmrs_u4"
    assert pruning.report.removed > 20 and pruning.history[-1]["compression"] > 0.2
    with torch.no_grad():
        predicted = model.predict(ids).argmax(-1)
        assert (predicted == labels).float().mean() > 0.95
        assert torch.equal(pruning.converted(ids).argmax(-1), predicted)
