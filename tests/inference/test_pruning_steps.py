"""A pruning run with too few optimizer steps is told so when ``fit`` starts.

Adam moves a noise posterior's log sigma by at most about ``noise_lr`` per step, and a dF
criterion removes a structure once that log sigma has reached about
``log(log_high - log_low)`` (the posterior as wide as its prior): from the initial -5 at
``noise_lr`` 0.03 that takes 267 steps. ``benchmarks/language_model_steps.py`` measured it on
a tiny GPT-2 on the defaults: 250 steps of pruning epochs remove nothing, 360 remove 72.5%.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

from pyro_prune.data import train_val_split
from pyro_prune.inference import ContinuousPruning, FitContext, fit, make_optimizer
from pyro_prune.inference.optim import DEFAULT_NOISE_LR
from pyro_prune.inference.schedules import PruningStepsWarning, pruning_steps_needed
from pyro_prune.models import MLP, LeNet5, bayesianize

DEFAULT_STEPS = math.ceil((math.log(20.0) + 5.0) / 0.03)  # 267


def _start(schedule: ContinuousPruning, model, train, *, epochs: int, batch_size: int,
           noise_lr: float | None = DEFAULT_NOISE_LR) -> list[warnings.WarningMessage]:
    """The warnings ``schedule.on_fit_start`` gives at the start of such a ``fit``."""
    ctx = FitContext(model=model, guide=model.guide, optimizer=make_optimizer(model, lr=1e-2, noise_lr=noise_lr),
                     train=train, val=None, batch_size=batch_size, seed=0, epochs=epochs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schedule.on_fit_start(ctx)
    return [w for w in caught if issubclass(w.category, PruningStepsWarning)]


def test_the_steps_needed_follow_from_the_initial_log_sigma_the_prior_and_noise_lr() -> None:
    model = MLP(64, [16], 10)
    assert DEFAULT_STEPS == 267
    assert pruning_steps_needed(model, DEFAULT_NOISE_LR) == DEFAULT_STEPS
    assert pruning_steps_needed(model, 0.1) == 80  # ceil(7.996 / 0.1)
    gate = next(iter(model.noise_layers().values()))
    with torch.no_grad():
        gate.log_scale[3] = 2.0  # one structure already wide: the nearest decides
    assert pruning_steps_needed(model, DEFAULT_NOISE_LR) == math.ceil((math.log(20.0) - 2.0) / 0.03) == 34
    gate.prune(torch.arange(16) == 3)  # a removed structure no longer counts
    assert pruning_steps_needed(model, DEFAULT_NOISE_LR) == DEFAULT_STEPS
    with torch.no_grad():
        gate.log_scale.fill_(5.0)  # wider than the prior's range: nothing to wait for
    assert pruning_steps_needed(model, DEFAULT_NOISE_LR) == 0


def test_fit_warns_once_at_the_start_of_a_short_pruning_run_with_the_numbers(digits) -> None:
    train, _ = digits  # 1,438 examples: 12 steps per epoch at batch 128
    with pytest.warns(PruningStepsWarning) as caught:
        result = fit(MLP(64, [16], 10), train, epochs=2, progress=False,
                     schedule=ContinuousPruning(finetune_epochs=1))
    steps_warnings = [w for w in caught if issubclass(w.category, PruningStepsWarning)]
    assert len(steps_warnings) == 1 and steps_warnings[0].filename == __file__  # the caller's line
    message = str(steps_warnings[0].message)
    assert message.startswith("this pruning run takes 24 optimizer steps up to its last pruning epoch "
                              "(2 epochs of 12 at batch_size 128), fewer than the 267 ")
    assert "noise_lr=0.03" in message and "epochs=23" in message and "smaller batch_size" in message
    assert "raise noise_lr (to at least about 0.33 for 24 steps)" in message
    assert result.report.removed == 0  # the run indeed removes nothing


def test_the_boundary_is_steps_times_noise_lr_against_the_distance() -> None:
    train = TensorDataset(torch.randn(64, 64), torch.arange(64) % 10)  # 4 steps per epoch at batch 16
    model = MLP(64, [16], 10)
    needed = pruning_steps_needed(model, 0.5)
    assert needed == 16
    assert _start(ContinuousPruning(), model, train, epochs=4, batch_size=16, noise_lr=0.5) == []
    [warned] = _start(ContinuousPruning(), model, train, epochs=3, batch_size=16, noise_lr=0.5)
    assert "takes 12 optimizer steps" in str(warned.message) and "epochs=4" in str(warned.message)
    # only the epochs up to the last pruning one count: with every=2, 5 epochs prune after 4
    assert _start(ContinuousPruning(every=2), model, train, epochs=5, batch_size=16, noise_lr=0.5) == []
    assert len(_start(ContinuousPruning(every=3), model, train, epochs=5, batch_size=16, noise_lr=0.5)) == 1
    # noise_lr=None: the noise posteriors learn at lr
    assert len(_start(ContinuousPruning(), model, train, epochs=4, batch_size=16, noise_lr=None)) == 1


def test_a_kl_warmup_is_not_warned_about() -> None:
    """A weight growing from epoch to epoch makes Adam step further than noise_lr: no bound."""
    train = TensorDataset(torch.randn(64, 64), torch.arange(64) % 10)
    model = MLP(64, [16], 10)
    assert len(_start(ContinuousPruning(), model, train, epochs=3, batch_size=64)) == 1
    assert _start(ContinuousPruning(kl_warmup_epochs=2), model, train, epochs=3, batch_size=64) == []


def test_a_thresholded_criterion_is_not_warned_about() -> None:
    """SNR < 1 removes at sigma ~0.8, long before the posterior is as wide as its prior."""
    train = TensorDataset(torch.randn(64, 64), torch.arange(64) % 10)
    assert _start(ContinuousPruning("snr"), MLP(64, [16], 10), train, epochs=1, batch_size=64) == []


def test_the_documented_runs_on_the_defaults_are_not_warned_about(digits) -> None:
    """The README's and docs/defaults.md's fits and the digits demo's take enough steps."""
    from pyro_prune.demo import DemoConfig

    train, _ = digits
    assert _start(ContinuousPruning(finetune_epochs=2), LeNet5(1, 10, 8), train, epochs=10, batch_size=32) == []
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 10))
    assert _start(ContinuousPruning(finetune_epochs=2), bayesianize(plain), train, epochs=10,
                  batch_size=32) == []
    assert _start(ContinuousPruning(), MLP(64, [100, 100], 10), train, epochs=20, batch_size=64) == []
    cfg = DemoConfig().run_config("mlp", "bmrs")
    demo_train, _ = train_val_split(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    assert _start(ContinuousPruning(finetune_epochs=cfg.finetune_epochs), MLP(64, [100, 100], 10),
                  demo_train, epochs=cfg.epochs, batch_size=cfg.batch_size, noise_lr=cfg.noise_lr) == []


def test_the_rule_agrees_with_the_language_model_measurement() -> None:
    """The tiny GPT-2 of benchmarks/language_model_steps.py (256 sequences, batch 128: 2 steps
    per epoch): 125 training epochs (250 steps) removed nothing on seeds 0-2 and are warned
    about; 180 (360 steps) removed 72.5% of the structures and are not."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    lm = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=12, n_embd=16, n_layer=1, n_head=4, n_positions=16,
                                          bos_token_id=1, eos_token_id=1))
    ids = torch.randint(0, 12, (256, 8))
    model = bayesianize(lm, example_input=ids[:2])
    train = TensorDataset(ids, ids)
    [warned] = _start(ContinuousPruning(), model, train, epochs=125, batch_size=128)
    assert "takes 250 optimizer steps" in str(warned.message) and f"the {DEFAULT_STEPS} " in str(warned.message)
    assert _start(ContinuousPruning(), model, train, epochs=180, batch_size=128) == []


@pytest.mark.parametrize(("examples", "batch_size", "noise_lr", "expected"), [
    (64, 16, 0.1, 60),  # 4 steps an epoch; 80 needed, 3x = 240 steps
    (64, 16, 0.5, 20),  # 16 needed, 48 steps in 12 epochs: the default 20
    (640, 16, 0.1, 20),  # 40 steps an epoch: the default 20
])
@pytest.mark.filterwarnings("ignore:pruning would empty")  # random labels: nothing is needed
def test_fit_without_epochs_gives_a_pruning_run_three_times_the_steps_its_noise_needs(
        examples: int, batch_size: int, noise_lr: float, expected: int, caplog) -> None:
    train = TensorDataset(torch.randn(examples, 8), torch.arange(examples) % 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningStepsWarning)  # enough steps: never warned about
        with caplog.at_level("INFO", logger="pyro_prune"):
            result = fit(MLP(8, [4], 3), train, batch_size=batch_size, noise_lr=noise_lr, progress=False,
                         schedule=ContinuousPruning(finetune_epochs=1))
    assert result.config["epochs"] == expected and len(result.history) == expected + 1
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epochs: ")]
    if expected == 20:
        assert said == []
    else:  # one line saying why
        assert said == [f"epochs: {expected}, not 20: an epoch is 4 optimizer steps, and the noise posteriors "
                        f"need about 80 steps at noise_lr=0.1 to widen to their prior; {expected} epochs "
                        f"give {4 * expected} (epochs= to choose)"]


@pytest.mark.filterwarnings("ignore:pruning would empty")
def test_fit_without_epochs_counts_a_data_loaders_batches_and_keeps_20_without_pruning() -> None:
    data = TensorDataset(torch.randn(64, 8), torch.arange(64) % 3)
    loader = torch.utils.data.DataLoader(data, batch_size=32)  # 2 steps an epoch
    result = fit(MLP(8, [4], 3), loader, noise_lr=0.1, progress=False, schedule=ContinuousPruning(finetune_epochs=0))
    assert result.config["epochs"] == 120  # 240 steps
    assert fit(MLP(8, [4], 3), data, progress=False).config["epochs"] == 20  # nothing to prune


@pytest.mark.filterwarnings("ignore:pruning would empty")  # random labels: nothing is needed
@pytest.mark.parametrize("network", ["plain_torch", "hf_vit"])
def test_fit_without_epochs_on_networks_the_project_did_not_write(network: str, caplog) -> None:
    """A plain-torch MLP and a tiny Hugging Face ViT, bayesianized: the same rule counts their
    noise layers (log sigma -5 at the start: 27 steps at noise_lr 0.3, 81 wanted, 3 steps an
    epoch of 48 examples at batch 16, so 27 epochs)."""
    import foreign_networks as foreign
    from torch import nn

    torch.manual_seed(0)
    if network == "plain_torch":
        x = foreign.vectors(48)
        model = bayesianize(nn.Sequential(nn.Linear(x.shape[1], 16), nn.GELU(), nn.Linear(16, foreign.CLASSES)))
    else:
        x = foreign.images(48)
        model = bayesianize(foreign.hf_vit(), example_input=x[:2])
    y = torch.arange(48) % foreign.CLASSES
    assert pruning_steps_needed(model, 0.3) == 27
    with caplog.at_level("INFO", logger="pyro_prune"):
        result = fit(model, (x, y), batch_size=16, noise_lr=0.3, progress=False,
                     schedule=ContinuousPruning(finetune_epochs=1))
    assert result.config["epochs"] == 27 and len(result.history) == 28
    assert any(r.getMessage().startswith("epochs: 27, not 20: an epoch is 3 optimizer steps") for r in caplog.records)
