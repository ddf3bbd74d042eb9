"""pyro_prune.lightning on one process: the default recipe of fit, its KL weights, its pruning."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from pyro_prune.data import load_dataset
from pyro_prune.inference.optim import DEFAULT_NOISE_LR
from pyro_prune.models import MLP

L = pytest.importorskip("lightning")

from pyro_prune.lightning import PruningCallback, PruningModule  # noqa: E402


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
    x = train.tensors[0][:64]
    assert torch.allclose(pruning.converted(x), model.predict(x), atol=1e-4)
