"""Minibatches of any data set, per rank; fit on Datasets, streams and DataLoaders."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from pyro_prune.inference import evaluate, fit
from pyro_prune.inference.batches import batch_source, steps_per_epoch
from pyro_prune.inference.distributed import DistributedInfo
from pyro_prune.models import MLP


class Pairs(Dataset):
    """A map-style data set that is not a TensorDataset (reads one example at a time)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class Stream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, sized: bool) -> None:
        self.x, self.y, self.sized = x, y, sized

    def __iter__(self):
        yield from zip(self.x, self.y)

    def __len__(self) -> int:
        if not self.sized:
            raise TypeError("a stream of unknown length")
        return len(self.x)


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3), torch.randint(0, 4, (n,), generator=g)


def _ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[:, 0]]


@pytest.mark.parametrize("n,batch", [(50, 8), (49, 16), (17, 32)])
def test_tensor_shards_are_the_one_process_batches(n: int, batch: int) -> None:
    x, y = _data(n)
    one = list(batch_source(TensorDataset(x, y), batch, generator=torch.Generator().manual_seed(3),
                            seed=3).epoch(0))
    ranks = [list(batch_source(TensorDataset(x, y), batch, generator=torch.Generator().manual_seed(3),
                               seed=3, info=DistributedInfo(r, 2, r, "gloo")).epoch(0)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for k, (xb, _, total) in enumerate(one):
        assert total == len(xb) == ranks[0][k][2] == ranks[1][k][2]
        assert _ids(ranks[0][k][0]) == _ids(xb)[0::2] and _ids(ranks[1][k][0]) == _ids(xb)[1::2]


def test_a_pair_of_tensors_takes_the_tensor_path_and_its_shards() -> None:
    x, y = _data(49)

    def batches(data, info=None):
        source = batch_source(data, 16, generator=torch.Generator().manual_seed(3), seed=3, info=info)
        return type(source).__name__, [(_ids(xb), yb.tolist(), total) for xb, yb, total in source.epoch(0)]

    for pair in ((x, y), [x, y]):
        assert batches(pair) == batches(TensorDataset(x, y))
        assert batches(pair)[0] == "TensorBatches"
        for r in (0, 1):  # each rank's share of every global batch, as for the TensorDataset
            info = DistributedInfo(r, 2, r, "gloo")
            assert batches(pair, info) == batches(TensorDataset(x, y), info)
    with pytest.raises(ValueError, match=r"^train: 49 inputs but 48 targets"):
        batch_source((x, y[:48]), 16, generator=torch.Generator(), seed=0)


@pytest.mark.parametrize("kind", ["dataset", "stream", "loader"])
def test_other_data_sets_shard_without_overlap(kind: str) -> None:
    x, y = _data(48)
    make = {"dataset": lambda: Pairs(x, y), "stream": lambda: Stream(x, y, sized=True),
            "loader": lambda: DataLoader(Pairs(x, y), batch_size=8)}[kind]
    seen = []
    for r in (0, 1):
        source = batch_source(make(), 8, generator=torch.Generator().manual_seed(0), seed=0,
                              info=DistributedInfo(r, 2, r, "gloo"))
        assert source.batch_size == 8
        batches = list(source.epoch(1))
        assert all(len(xb) <= 4 for xb, _, _ in batches)  # the global batch of 8 is split
        seen.append(sorted(i for xb, _, _ in batches for i in _ids(xb)))
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(48))


def test_global_batch_must_split_evenly_for_a_sampler() -> None:
    x, y = _data(48)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        batch_source(Pairs(x, y), 9, generator=torch.Generator(), seed=0,
                     info=DistributedInfo(0, 2, 0, "gloo"))


@pytest.fixture(scope="module")
def digits():
    from pyro_prune.data import load_dataset

    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.mark.parametrize("kind", ["dataset", "stream", "loader"])
def test_fit_trains_on_any_data_set(digits, kind: str) -> None:
    train, test = digits
    x, y = train.tensors
    data = {"dataset": Pairs(x, y), "stream": Stream(x, y, sized=False),
            "loader": DataLoader(Pairs(x, y), batch_size=64, shuffle=True)}[kind]
    torch.manual_seed(0)
    net = MLP(64, [32], 10)
    num_data = len(x) if kind == "stream" else None
    result = fit(net, data, epochs=3, batch_size=64, lr=1e-2, progress=False, num_data=num_data,
                 val=Pairs(*test.tensors))
    assert result.config["num_data"] == len(x) and result.config["batch_size"] == 64
    assert result.history[-1]["val_accuracy"] > 0.8
    assert evaluate(net, Pairs(*test.tensors)) == evaluate(net, test)


def test_a_stream_without_length_needs_num_data(digits) -> None:
    x, y = digits[0].tensors
    with pytest.raises(ValueError, match="num_data"):
        fit(MLP(64, [8], 10), Stream(x, y, sized=False), epochs=1, progress=False)
    with pytest.raises(ValueError, match="num_data"):
        fit(MLP(64, [8], 10), Pairs(x, y), epochs=1, progress=False, num_data=0)
    with pytest.raises(TypeError, match="pairs"):
        fit(MLP(64, [8], 10), DataLoader(x, batch_size=8), epochs=1, progress=False)


def test_steps_per_epoch_counts_batches_or_says_it_cannot() -> None:
    class Stream(IterableDataset):
        def __iter__(self):
            yield from ((torch.zeros(2), torch.tensor(0)) for _ in range(5))

    data = TensorDataset(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    assert steps_per_epoch(data, 4) == 3 and steps_per_epoch(data, 10) == 1
    assert steps_per_epoch(DataLoader(data, batch_size=3), 64) == 4  # the loader's own batches
    assert steps_per_epoch(Stream(), 4) is None and steps_per_epoch(DataLoader(Stream(), batch_size=2), 4) is None
