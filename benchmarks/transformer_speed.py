"""Speed of a pruned, converted transformer, and the training step of a bayesianized BERT.

Two goals, each measured as a ratio of two timings taken side by side in one process:

1. inference: a Hugging Face BERT classifier (hidden 128, 2 layers, 4 heads, FFN 512; token
   ids, batch 32, sequence 128) with half of its attention heads and half of its FFN
   neurons removed and converted (``to_deterministic``) runs faster than the unpruned network
   converted the same way by at least 0.7x its reduction in multiply-accumulates:
   ``speed-up / (MACs before / MACs after) >= 0.7``;
2. training: one SVI step (``fast_elbo_loss`` + backward + Adam) of the bayesianized BERT-tiny
   costs at most 1.5x one plain step (cross-entropy + backward + Adam) of the same network.

    python benchmarks/transformer_speed.py            # medians of 7 timings each
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import format_table, median_time, parse_benchmark_args, print_header, write_results  # noqa: E402
from torch import nn  # noqa: E402

from pyro_prune.convert import count_macs, count_params, to_deterministic  # noqa: E402
from pyro_prune.inference.elbo import fast_elbo_loss  # noqa: E402
from pyro_prune.models import bayesianize  # noqa: E402


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


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
    plain = transformers.BertForSequenceClassification(bert_config).eval()
    ids = torch.randint(0, 1000, (args.batch, args.seq))
    labels = torch.randint(0, 10, (args.batch,))
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
    times: dict[str, list[float]] = {"plain": [], "full": [], "pruned": []}
    with torch.no_grad():
        for _ in range(args.repeats):  # interleaved, so all three see the same machine load
            times["plain"].append(median_time(lambda: plain(input_ids=ids), repeats=1, warmup=1))
            times["full"].append(median_time(lambda: full(ids), repeats=1, warmup=1))
            times["pruned"].append(median_time(lambda: pruned(ids), repeats=1, warmup=1))
    t_plain, t_full, t_pruned = (statistics.median(times[k]) for k in ("plain", "full", "pruned"))
    speedup = t_full / t_pruned
    mac_ratio = macs_full / macs_pruned
    inference = {"plain_hf_ms": 1e3 * t_plain, "converted_full_ms": 1e3 * t_full,
                 "converted_pruned_ms": 1e3 * t_pruned, "speedup": speedup, "mac_reduction": mac_ratio,
                 "speedup_over_mac_reduction": speedup / mac_ratio,
                 "params_full": count_params(full), "params_pruned": count_params(pruned)}

    # training step: plain vs bayesianized (a fresh, unpruned BERT-tiny)
    torch.manual_seed(args.seed)
    tiny = transformers.BertForSequenceClassification(bert_config)
    plain_net = _Logits(tiny).train()
    bayes = bayesianize(tiny, example_input=ids[:2], num_data=10 * args.batch).train()
    opt_plain = torch.optim.Adam(plain_net.parameters(), lr=1e-4)
    opt_bayes = torch.optim.Adam(bayes.parameters(), lr=1e-4)

    def plain_step() -> None:
        opt_plain.zero_grad()
        nn.functional.cross_entropy(plain_net(ids), labels).backward()
        opt_plain.step()

    def bayes_step() -> None:
        opt_bayes.zero_grad()
        loss, _ = fast_elbo_loss(bayes, ids, labels)
        loss.backward()
        opt_bayes.step()

    step_plain, step_bayes = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        step_plain.append(median_time(plain_step, repeats=1, warmup=1))
        step_bayes.append(median_time(bayes_step, repeats=1, warmup=1))
    t_step_plain, t_step_bayes = statistics.median(step_plain), statistics.median(step_bayes)
    training = {"plain_step_ms": 1e3 * t_step_plain, "bayesianized_step_ms": 1e3 * t_step_bayes,
                "step_ratio": t_step_bayes / t_step_plain}
    rows = [{"measure": "inference", **inference}, {"measure": "training", **training}]
    print(format_table([inference]))
    print(format_table([training]))
    print(f"inference goal (>= 0.7): {speedup / mac_ratio:.2f}; training goal (<= 1.5): "
          f"{t_step_bayes / t_step_plain:.2f}")
    write_results(__file__, config=config, seeds=[args.seed], rows=rows,
                  extra={"gates": {n: g.num_structures for n, g in model.gates().items()}})


if __name__ == "__main__":
    main()
