"""A Hugging Face BERT classifier on MNIST rows, pruned by heads and FFN neurons (BMRS), on
the library's defaults.

Each 28x28 image is a sequence of 28 tokens of 28 features (its rows). A BERT-style
encoder built from a small ``BertConfig`` (random initial weights, nothing downloaded)
reads the rows through a linear token embedding. ``bayesianize`` puts a gate over the
heads of every attention layer and over the FFN neurons; ``fit`` trains gates and weights
with its defaults (batch 128, Adam lr 1e-3, noise_lr 0.03, kl_scale "auto" = "paper":
num_data / num_structures); BMRS_U (threshold-free: remove where dF >= 0) decides what
goes. Every head's dF is recorded beside the test accuracy lost when that head alone is
removed. The model is converted to a smaller plain module and saved so that it reloads
from its directory with the per-layer widths recorded in its ``config.json``.

    python benchmarks/hf_bert_mnist.py --threads 1                    # 60,000 images, 3 epochs
    python benchmarks/hf_bert_mnist.py --threads 1 --train 6000 --epochs 5 --suffix _short
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import format_table, parse_benchmark_args, print_header, write_results  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from pyro_prune.convert import (  # noqa: E402
    count_macs,
    count_params,
    layer_widths,
    resize_layers,
    to_deterministic,
)
from pyro_prune.data import load_dataset  # noqa: E402
from pyro_prune.inference import evaluate, fit  # noqa: E402
from pyro_prune.models import bayesianize  # noqa: E402
from pyro_prune.reduction import structure_decisions  # noqa: E402


class RowsBert(nn.Module):
    """BERT over the 28 rows of an image: one token per row."""

    def __init__(self, config) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        import transformers

        self.rows = nn.Linear(28, config.hidden_size)
        self.bert = transformers.BertForSequenceClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert(inputs_embeds=self.rows(x.reshape(x.shape[0], 28, 28))).logits


def main(argv: list[str] | None = None) -> None:
    import transformers
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=60000, help="training images (a subset)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--criterion", default="bmrs_u", help="a threshold-free criterion")
    parser.add_argument("--suffix", default="", help="results file benchmarks/results/hf_bert_mnist<suffix>.json")
    args = parse_benchmark_args(parser, argv)
    config = {k: v for k, v in vars(args).items() if k not in ("seed", "suffix")}
    print_header(__file__, seeds=[args.seed], config=config)
    torch.manual_seed(args.seed)

    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.train]
    train = TensorDataset(train.tensors[0][order], train.tensors[1][order])
    test = TensorDataset(*test.tensors)

    bert_config = transformers.BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=8, intermediate_size=128,
        max_position_embeddings=32, vocab_size=2, num_labels=10, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    plain = RowsBert(bert_config)
    model = bayesianize(plain, example_input=train.tensors[0][:2])
    t0 = time.perf_counter()
    fit(model, train, epochs=args.epochs, progress=False, seed=args.seed)  # the library's defaults
    train_seconds = time.perf_counter() - t0
    kl_scale = model.resolve_kl_scale("auto", num_data=len(train))  # what fit used
    steps = args.epochs * -(-len(train) // 128)  # fit's default batch of 128
    model.eval()
    before = evaluate(model, test)
    full = to_deterministic(model)  # the unpruned network, converted the same way

    decisions = structure_decisions(model, args.criterion)  # threshold-free: dF >= 0
    head_rows = []
    for name, (score, remove) in decisions.items():
        gate = model.gates()[name]
        if not name.endswith("head_gate"):
            continue
        layer = int(name.split("layer_")[1].split("_")[0])
        theta = gate.expected_theta().detach()
        for h in range(gate.num_structures):  # the accuracy lost when this head alone goes
            ablated = copy.deepcopy(model)
            ablated.gates()[name].prune(torch.arange(gate.num_structures) == h)
            ablated.eval()
            head_rows.append({
                "layer": layer, "head": h, "dF": float(-score[h]), "removed": bool(remove[h]),
                "E_theta": float(theta[h]), "log_scale": float(gate.log_scale[h].detach()),
                "ablation_accuracy_cost": before["accuracy"] - evaluate(ablated, test)["accuracy"]})
    ffn = {}
    for name, (score, _) in decisions.items():
        if "intermediate" in name:
            dF = -score
            ffn[name] = {"dF_min": float(dF.min()), "dF_max": float(dF.max()),
                         "log_scale_median": float(model.gates()[name].log_scale.detach().median())}
    for name, (_, remove) in decisions.items():
        model.gates()[name].prune(remove)
    model.eval()
    after = evaluate(model, test)
    print(format_table(head_rows))
    small = to_deterministic(model)
    x = test.tensors[0][:256]
    with torch.no_grad():
        max_diff = float((small(x) - model.predict(x)).abs().max())

    # per-layer heads and FFN widths of the converted network
    head_dim = bert_config.hidden_size // bert_config.num_attention_heads
    rows = []
    for i in range(bert_config.num_hidden_layers):
        layer = small.get_submodule(f"module.bert.bert.encoder.layer.{i}")
        rows.append({"layer": i, "heads": layer.get_submodule("attention.output.dense").in_features // head_dim,
                     "heads_before": bert_config.num_attention_heads,
                     "ffn": layer.get_submodule("intermediate.dense").out_features,
                     "ffn_before": bert_config.intermediate_size})
    print(format_table(rows))

    # save the smaller BERT so that it reloads from its directory
    bert_small = small.get_submodule("module.bert")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bert-mnist-pruned"
        saved_config = bert_config.__class__.from_dict(bert_config.to_dict())
        saved_config.pyro_prune_widths = layer_widths(bert_small)  # per-layer widths
        fresh = transformers.BertForSequenceClassification(saved_config)
        resize_layers(fresh, saved_config.pyro_prune_widths)
        state = fresh.state_dict()  # the unused token embedding keeps its initial values
        state.update({k: v for k, v in bert_small.state_dict().items() if k in state})
        fresh.load_state_dict(state)
        fresh.save_pretrained(out)
        # reloading: the config carries the widths
        loaded_config = transformers.BertConfig.from_pretrained(out)
        reloaded = transformers.BertForSequenceClassification(loaded_config)
        resize_layers(reloaded, loaded_config.pyro_prune_widths)
        reloaded.load_state_dict(load_file(out / "model.safetensors"))
        reloaded.eval()
        rows_layer = small.get_submodule("module.rows")
        with torch.no_grad():
            reload_diff = float((reloaded(inputs_embeds=rows_layer(x.reshape(-1, 28, 28))).logits
                                 - small(x)).abs().max())

    macs_before = count_macs(full, (1, 28, 28))
    macs_after = count_macs(small, (1, 28, 28))
    summary = {
        "test_accuracy_before": before["accuracy"], "test_accuracy_after": after["accuracy"],
        "params_before": count_params(full), "params_after": count_params(small),
        "macs_before": macs_before, "macs_after": macs_after,
        "max_abs_diff_converted_vs_predict": max_diff, "max_abs_diff_reloaded": reload_diff,
        "train_seconds": round(train_seconds, 1), "steps": steps, "kl_scale": kl_scale,
        "num_structures": model.num_structures(),
        "heads_removed": sum(r["removed"] for r in head_rows), "heads": len(head_rows),
        "ffn": ffn,
    }
    print(format_table([summary]))
    write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                  extra={"summary": summary, "heads": head_rows}, suffix=args.suffix)


if __name__ == "__main__":
    main()
