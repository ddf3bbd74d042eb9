"""Continuous pruning of a tiny GPT-2 language model against the number of optimizer steps.

The network and data of the language-model test (``tests/inference/test_token_labels.py``):
a ``GPT2LMHeadModel`` from a tiny config (vocabulary 12, width 16, one block of 4 heads, 64
MLP units), random weights, learning to count modulo its vocabulary; 256 training and 64 test
sequences of 8 tokens, the first two next tokens of each labelled ``-100`` (ignored).
Every run is ``fit(model, train, epochs=E, lr=..., batch_size=..., schedule=ContinuousPruning())``
with every other setting the library's default (``noise_lr`` 0.03, ``kl_scale`` "auto", BMRS
with 10 fine-tuning epochs), and two runs of the defaults' 80 steps with a larger KL weight
or noise learning rate. Rows: the optimizer steps, the structures removed, the test
set's per-token accuracy and loss, and the widest noise posterior left (sigma of its
log-normal; the log-uniform prior's is 5.77).

The point: a noise posterior's log sigma moves about ``noise_lr`` per Adam step, from -5 to
about +2.6 before the posterior of an unneeded structure is the prior's, so pruning needs a
few hundred steps; 256 examples at the default batch 128 make 2 steps per epoch.

    python benchmarks/language_model_steps.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import _common as common
import torch
from torch.utils.data import TensorDataset

NAME = "language_model_steps"
VOCAB, LENGTH, PROMPT = 12, 8, 2
#: (epochs, lr, batch size, other fit options): the defaults at growing epochs, smaller
#: batches, then the defaults' 80 steps with a larger KL weight or noise learning rate
SETTINGS: list[tuple[int, float, int, dict[str, float]]] = [
    (30, 1e-3, 128, {}), (60, 1e-3, 128, {}), (125, 1e-3, 128, {}), (180, 1e-3, 128, {}), (250, 1e-3, 128, {}),
    (500, 1e-3, 128, {}), (30, 1e-3, 16, {}), (30, 1e-2, 16, {}),
    (30, 1e-3, 128, {"kl_scale": 50.0}), (30, 1e-3, 128, {"noise_lr": 0.1})]


def counting(n: int, seed: int) -> TensorDataset:
    """Sequences counting up modulo the vocabulary; the first ``PROMPT`` labels ignored."""
    start = torch.randint(0, VOCAB, (n, 1), generator=torch.Generator().manual_seed(seed))
    tokens = (start + torch.arange(LENGTH + 1)) % VOCAB
    labels = tokens[:, 1:].clone()
    labels[:, :PROMPT] = -100
    return TensorDataset(tokens[:, :-1], labels)


def run_one(epochs: int, lr: float, batch_size: int, seed: int, n_train: int,
            options: dict[str, float]) -> dict[str, Any]:
    import transformers

    from pyro_prune.inference import ContinuousPruning, evaluate, fit
    from pyro_prune.models import bayesianize

    train, test = counting(n_train, seed=0), counting(64, seed=1)
    torch.manual_seed(seed)
    lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=4, n_positions=16, bos_token_id=1, eos_token_id=1))
    model = bayesianize(lm, example_input=train.tensors[0][:2])
    t0 = time.perf_counter()
    result = fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False, **options,
                 schedule=ContinuousPruning())
    seconds = time.perf_counter() - t0
    after = evaluate(model, test)
    gates = model.gates()
    heads = sum(int((~g.kept).sum()) for n, g in gates.items() if n.endswith("head_gate"))
    mlp = sum(int((~g.kept).sum()) for n, g in gates.items() if not n.endswith("head_gate"))
    widest = max(float(layer.scale.detach()[layer.kept].max()) for layer in model.noise_layers().values()
                 if bool(layer.kept.any()))
    return {"steps_per_epoch": math.ceil(n_train / batch_size),
            "heads_removed": heads, "mlp_removed": mlp,
            "structures": sum(g.num_structures for g in gates.values()),
            "test_accuracy": after["accuracy"], "test_loss": after["loss"],
            "widest_sigma_kept": widest, "report": str(result.report), "time_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=256)
    args = common.parse_benchmark_args(parser, threads=1, seed=False)
    config = {"train": args.train, "test": 64, "vocab": VOCAB, "length": LENGTH, "ignored_prompt": PROMPT,
              "network": "GPT2LMHeadModel(vocab 12, n_embd 16, 1 layer, 4 heads, 64 MLP units)",
              "fit": "fit(..., schedule=ContinuousPruning()); noise_lr 0.03, kl_scale auto, 10 fine-tuning epochs",
              "settings (epochs, lr, batch, options)": SETTINGS}
    common.print_header(__file__, seeds=args.seeds, config=config)
    cache = common.RunCache(common.RESULTS_DIR / f"{NAME}.runs.json")
    rows = []
    for epochs, lr, batch, options in SETTINGS:
        for seed in args.seeds:
            key = common.RunCache.key(epochs, lr, batch, seed, args.train, *([options] if options else []))
            run = cache[key] if key in cache else cache.put(key, run_one(epochs, lr, batch, seed, args.train, options))
            steps = (epochs + 10) * run["steps_per_epoch"]
            row = {"epochs": epochs, "lr": lr, "batch_size": batch, "options": options, "seed": seed,
                   "optimizer_steps": steps,
                   **{k: v for k, v in run.items() if k != "steps"}}
            row["compression"] = (run["heads_removed"] + run["mlp_removed"]) / run["structures"]
            rows.append(row)
            print(f"epochs {epochs} lr {lr} batch {batch} {options or ''} seed {seed}: {steps} steps, heads {run['heads_removed']}/4 "
                  f"mlp {run['mlp_removed']}/64, accuracy {run['test_accuracy']:.3f}, "
                  f"widest sigma {run['widest_sigma_kept']:.3g} ({run['time_s']:.0f}s)", flush=True)
    print(common.format_table(rows, ["epochs", "lr", "batch_size", "options", "seed", "optimizer_steps", "heads_removed",
                              "mlp_removed", "compression", "test_accuracy", "test_loss", "widest_sigma_kept"]))
    print(f"wrote {common.write_results(__file__, config=config, seeds=args.seeds, rows=rows)}")


if __name__ == "__main__":
    main()
