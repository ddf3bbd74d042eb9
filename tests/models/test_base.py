"""The one home of masks on PrunableNet: kept_mask, masked (temporary), prune (monotone),
and the global ranking that never empties a gate."""

from __future__ import annotations

import itertools

import pytest
import torch

from pyro_prune.models import MLP
from pyro_prune.models.gate import rank_structures, removals_in_order


@pytest.fixture(params=["noise", "mask"])
def net(request: pytest.FixtureRequest) -> MLP:
    torch.manual_seed(0)
    if request.param == "noise":
        return MLP(6, [5, 4], 3, num_data=50)
    return MLP(6, [5, 4], 3, weights="gaussian", gate="mask", num_data=50)


def test_kept_mask_is_a_copy(net: MLP) -> None:
    mask = net.kept_mask()
    assert {n: tuple(m.shape) for n, m in mask.items()} == {n: (g.num_structures,) for n, g in net.gates().items()}
    first = next(iter(mask))
    mask[first][:] = False
    assert bool(net.gates()[first].kept.all())


def test_masked_intersects_restores_and_may_empty(net: MLP) -> None:
    names = list(net.gates())
    net.gates()[names[0]].kept[0] = False  # removed before: stays removed inside
    before = net.kept_mask()
    x = torch.randn(7, 6)
    keep = {names[0]: torch.tensor([True, True, False, True, True]), names[1]: torch.zeros(4, dtype=torch.bool)}
    with net.masked(keep) as inside:
        assert inside is net
        assert net.gates()[names[0]].kept.tolist() == [False, True, False, True, True]
        assert not bool(net.gates()[names[1]].kept.any())  # a gate may be emptied here
        out = net.predict(x)
        torch.testing.assert_close(out, out[:1].expand_as(out))  # nothing reaches the output
    assert all(torch.equal(before[n], m) for n, m in net.kept_mask().items())
    with pytest.raises(RuntimeError, match="boom"), net.masked(keep):
        raise RuntimeError("boom")
    assert all(torch.equal(before[n], m) for n, m in net.kept_mask().items())
    with net.masked({n: torch.ones_like(m) for n, m in before.items()}, restore=True):
        assert all(bool(m.all()) for m in net.kept_mask().values())
    assert all(torch.equal(before[n], m) for n, m in net.kept_mask().items())
    with net.masked(None):
        assert all(torch.equal(before[n], m) for n, m in net.kept_mask().items())


@pytest.mark.parametrize(
    "bad,error,match",
    [
        ({"nope": torch.ones(5, dtype=torch.bool)}, ValueError, "unknown gate 'nope'"),
        ("all", TypeError, "dict gate name -> bool tensor"),
        (None, ValueError, "must be a bool tensor of shape"),
    ],
)
def test_bad_masks_name_the_problem(net: MLP, bad: object, error: type, match: str) -> None:
    if bad is None:
        bad = {next(iter(net.gates())): torch.ones(3)}
    with pytest.raises(error, match=match), net.masked(bad):  # type: ignore[arg-type]
        pass
    with pytest.raises(error, match=match):
        net.prune(bad)  # type: ignore[arg-type]


def test_prune_is_monotone_and_never_empties_a_gate(net: MLP) -> None:
    first, second = list(net.gates())
    assert net.prune({first: torch.tensor([True, False, False, False, True])}) == 2
    assert net.prune({first: torch.tensor([True, True, False, False, False])}) == 1  # one was gone
    assert net.kept_counts()[first] == 2
    with pytest.warns(RuntimeWarning, match="would empty"):
        removed = net.prune({second: torch.ones(4, dtype=torch.bool)})
    assert removed == 3 and net.kept_counts()[second] == 1


@pytest.mark.parametrize("sizes", [(3,), (2, 4), (1, 3, 2)])
def test_global_ranking_never_empties_a_gate(sizes: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(sizes))
    kept = {f"g{i}": torch.ones(n, dtype=torch.bool) for i, n in enumerate(sizes)}
    kept["g0"][0] = False if sizes[0] > 1 else True
    scores = {name: torch.rand(m.numel(), generator=gen) for name, m in kept.items()}
    order = rank_structures(kept, scores)
    # every kept structure once, lowest score first
    assert sorted(order) == sorted((n, i) for n, m in kept.items() for i in torch.nonzero(m).flatten().tolist())
    values = [float(scores[n][i]) for n, i in order]
    assert values == sorted(values)
    taken = list(removals_in_order(kept, order))
    counts = {n: int(m.sum()) for n, m in kept.items()}
    for _, name, _ in taken:
        counts[name] -= 1
    assert all(c == 1 for c in counts.values())  # all but one per gate go, none empties
    positions = [p for p, _, _ in taken]
    assert positions == sorted(positions) and all(order[p] == (n, i) for p, n, i in taken)
    # a prefix of the walk is the walk of the prefix
    k = len(order) // 2
    assert list(removals_in_order(kept, order[:k])) == list(itertools.takewhile(lambda t: t[0] < k, taken))
