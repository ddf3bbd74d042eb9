"""Speed of a pruned, converted transformer, and the training step of a bayesianized one.

Two networks of the same size (hidden 128, 2 layers, 4 heads, FFN 512; token ids, batch 32,
sequence 128): a Hugging Face BERT classifier, and a plain-torch ``nn.TransformerEncoder``
classifier written the way its authors write it (``nn.MultiheadAttention`` inside
``nn.TransformerEncoderLayer``, which ``bayesianize`` swaps for
:class:`~pyro_prune.models.attention.ProjectedMultiheadAttention`). Two goals per network,
each measured as a ratio of two timings taken side by side in one process:

1. inference: with half of its attention heads and half of its FFN neurons removed and
   converted (``to_deterministic``) the network runs faster than the unpruned network
   converted the same way by at least 0.7x its reduction in multiply-accumulates:
   ``speed-up / (MACs before / MACs after) >= 0.7``;
2. training: one SVI step (``fast_elbo_loss`` + backward + Adam) of the bayesianized network
   costs at most 1.5x one plain step (cross-entropy + backward + Adam) of the same network.

    python benchmarks/transformer_speed.py --threads 1   # medians of 7 timings each
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import format_table, median_time, parse_benchmark_args, print_header, write_results  # noqa: E402
from torch import nn  # noqa: E402

from pyro_prune.convert import count_macs, count_params, to_deterministic  # noqa: E402
from pyro_prune.inference.elbo import fast_elbo_loss  # noqa: E402
from pyro_prune.models import bayesianize  # noqa: E402


class EncoderClassifier(nn.Module):
    """A plain-torch transformer classifier: token embedding, ``nn.TransformerEncoder``, mean
    over the sequence, a linear head."""

    def __init__(self, vocab: int, hidden: int, heads: int, ffn: int, layers: int, classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=ffn, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(1))


def _interleaved(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn so that all see the same machine load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(median_time(fn, repeats=1, warmup=1))
    return {k: statistics.median(v) for k, v in times.items()}


def measure(name: str, make: Callable[[], nn.Module], call: Callable[[nn.Module, torch.Tensor], torch.Tensor],
            ids: torch.Tensor, labels: torch.Tensor, args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """The inference and training rows of one network (``make`` builds it with fresh weights;
    ``call`` runs the network as written on token ids and returns logits)."""
    torch.manual_seed(args.seed)
    plain = make().eval()
    model = bayesianize(plain, example_input=ids[:2])
    model.eval()
    full = to_deterministic(model)
    gen = torch.Generator().manual_seed(args.seed)
    for gate in model.gates().values():
        n = gate.num_structures
        remove = torch.zeros(n, dtype=torch.bool)
        remove[torch.randperm(n, generator=gen)[: int(args.fraction * n)]] = True
        gate.prune(remove)
    pruned = to_deterministic(model)
    macs_full = count_macs(full, (args.seq,), dtype=torch.long)
    macs_pruned = count_macs(pruned, (args.seq,), dtype=torch.long)
    with torch.no_grad():
        t = _interleaved({"plain": lambda: call(plain, ids), "full": lambda: full(ids),
                          "pruned": lambda: pruned(ids)}, args.repeats)
    speedup, mac_ratio = t["full"] / t["pruned"], macs_full / macs_pruned
    inference = {"network": name, "plain_as_written_ms": 1e3 * t["plain"],
                 "converted_full_ms": 1e3 * t["full"], "converted_pruned_ms": 1e3 * t["pruned"],
                 "speedup": speedup, "mac_reduction": mac_ratio,
                 "speedup_over_mac_reduction": speedup / mac_ratio,
                 "params_full": count_params(full), "params_pruned": count_params(pruned)}

    # training step: plain vs bayesianized (fresh, unpruned copies of the same network)
    torch.manual_seed(args.seed)
    fresh = make().train()
    bayes = bayesianize(fresh, example_input=ids[:2], num_data=10 * args.batch).train()
    opt_plain = torch.optim.Adam(fresh.parameters(), lr=1e-4)
    opt_bayes = torch.optim.Adam(bayes.parameters(), lr=1e-4)

    def plain_step() -> None:
        opt_plain.zero_grad()
        nn.functional.cross_entropy(call(fresh, ids), labels).backward()
        opt_plain.step()

    def bayes_step() -> None:
        opt_bayes.zero_grad()
        loss, _ = fast_elbo_loss(bayes, ids, labels)
        loss.backward()
        opt_bayes.step()

    s = _interleaved({"plain": plain_step, "bayes": bayes_step}, args.repeats)
    training = {"network": name, "plain_step_ms": 1e3 * s["plain"], "bayesianized_step_ms": 1e3 * s["bayes"],
                "step_ratio": s["bayes"] / s["plain"]}
    return inference, training, {n: g.num_structures for n, g in model.gates().items()}


def main(argv: list[str] | None = None) -> None:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--fraction", type=float, default=0.5, help="heads and FFN neurons removed")
    parser.add_argument("--repeats", type=int, default=7)
    args = parse_benchmark_args(parser, argv)
    config = {k: v for k, v in vars(args).items() if k != "seed"}
    print_header(__file__, seeds=[args.seed], config=config)
    torch.manual_seed(args.seed)
    bert_config = transformers.BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=512,
                                          max_position_embeddings=args.seq, num_labels=10)
    ids = torch.randint(0, 1000, (args.batch, args.seq))
    labels = torch.randint(0, 10, (args.batch,))
    networks: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, torch.Tensor], torch.Tensor]]] = {
        "hf_bert": (lambda: transformers.BertForSequenceClassification(bert_config),
                    lambda m, x: m(input_ids=x).logits),
        "torch_multihead_attention": (lambda: EncoderClassifier(1000, 128, 4, 512, 2, 10), lambda m, x: m(x)),
    }
    inference_rows, training_rows, gates = [], [], {}
    for name, (make, call) in networks.items():
        inference, training, gates[name] = measure(name, make, call, ids, labels, args)
        inference_rows.append(inference)
        training_rows.append(training)
    print(format_table(inference_rows))
    print(format_table(training_rows))
    for inf, tr in zip(inference_rows, training_rows):
        print(f"{inf['network']}: inference goal (>= 0.7): {inf['speedup_over_mac_reduction']:.2f}; "
              f"training goal (<= 1.5): {tr['step_ratio']:.2f}")
    rows = [{"measure": "inference", **r} for r in inference_rows] + \
        [{"measure": "training", **r} for r in training_rows]
    write_results(__file__, config=config, seeds=[args.seed], rows=rows, extra={"gates": gates})


if __name__ == "__main__":
    main()
