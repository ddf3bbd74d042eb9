"""pyro_prune.graph.trace: ops written out in the one graph form compute what they replace."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch import Tensor, nn

from pyro_prune.graph.trace import module_graph

_A = torch.ops.aten


class _Einsum(nn.Module):
    """``einsum(equation, x, *weights)`` for a batch ``x`` and fixed operands."""

    def __init__(self, equation: str, *shapes: tuple[int, ...]) -> None:
        super().__init__()
        self.equation = equation
        g = torch.Generator().manual_seed(1)
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(*s, generator=g)) for s in shapes)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum(self.equation, x, *self.weights)


class _TwoFromOne(nn.Module):
    """``einsum`` of two tensors made from one batch (``q k^T`` from a split)."""

    def __init__(self, equation: str, head: int) -> None:
        super().__init__()
        self.equation, self.head = equation, head

    def forward(self, x: Tensor) -> Tensor:
        a, b = x[..., :self.head], x[..., self.head:]
        return torch.einsum(self.equation, a, b)


def _graph_module(net: nn.Module, x: Tensor) -> tuple[fx.GraphModule, list[str]]:
    traced = module_graph(net, x, lambda m: False)
    assert traced.tracer == "export"  # fx could trace it; only the export path writes einsum out
    gm = fx.GraphModule(net, traced.graph)
    for key, value in traced.constants.items():
        setattr(gm, key, value)
    ops = [str(n.target) for n in traced.graph.nodes if n.op == "call_function"]
    return gm, ops


@pytest.mark.parametrize(("equation", "x_shape", "shapes"), [
    ("bi,ij->bj", (3, 4), [(4, 5)]),  # a linear layer
    ("bni,ij->bnj", (3, 2, 4), [(4, 5)]),
    ("...ij,jk->...ik", (3, 2, 4, 5), [(5, 6)]),  # an ellipsis
    ("bij,jk", (3, 4, 5), [(5, 2)]),  # the implicit output: "bik"
    ("bi,i->b", (3, 4), [(4,)]),  # a dot product
    ("bi,j->bij", (3, 4), [(5,)]),  # an outer product
    ("bhwc,cd->bhwd", (2, 3, 4, 5), [(5, 6)]),
    ("bijk,jk->bi", (2, 3, 4, 5), [(4, 5)]),  # two contracted labels
    ("bij,jkl->bikl", (2, 3, 4), [(4, 5, 6)]),  # two free labels on the right
    ("bijk,kl->bjil", (2, 3, 4, 5), [(5, 6)]),  # the output permuted
    ("bij,k->bi", (2, 3, 4), [(5,)]),  # labels summed out of each operand alone
    ("bi,ij,jk->bk", (3, 4), [(4, 5), (5, 2)]),  # three operands
    ("bij->bji", (2, 3, 4), []),  # one operand: a transpose
    ("bij->b", (2, 3, 4), []),  # one operand: a sum
    ("b...->...b", (2, 3, 4), []),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_einsum_is_written_out_as_products_and_computes_the_same(equation: str, x_shape: tuple[int, ...],
                                                                 shapes: list[tuple[int, ...]],
                                                                 dtype: torch.dtype) -> None:
    net = _Einsum(equation, *shapes).to(dtype)
    x = torch.randn(*x_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    gm, ops = _graph_module(net, x)
    assert "aten.einsum.default" not in ops, ops
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x))
        wider = torch.randn(7, *x_shape[1:], dtype=dtype)  # another batch size
        torch.testing.assert_close(gm(wider), net(wider))


@pytest.mark.parametrize(("equation", "head"), [
    ("bihd,bjhd->bhij", 2),  # attention scores, heads on a shared axis
    ("bqd,bkd->bqk", 3),
    ("bi,bj->bij", 2),  # outer product within each example
    ("bij,bij->bi", 2),  # elementwise product and sum
])
def test_einsum_of_two_activations_is_written_out(equation: str, head: int) -> None:
    net = _TwoFromOne(equation, head)
    ndim = len(equation.split(",")[0])
    x = torch.randn(4, *(3, 2)[:ndim - 2], 2 * head, generator=torch.Generator().manual_seed(0))
    gm, ops = _graph_module(net, x)
    assert "aten.einsum.default" not in ops and "aten.matmul.default" in ops
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x))


def test_an_einsum_with_a_diagonal_is_kept_as_it_is() -> None:
    net = _Einsum("bii->bi")
    x = torch.randn(2, 3, 3)
    gm, ops = _graph_module(net, x)
    assert "aten.einsum.default" in ops
    torch.testing.assert_close(gm(x), net(x))


class _Baddbmm(nn.Module):
    """``torch.baddbmm`` (or the method) of a bias and two batches made from one input."""

    def __init__(self, beta: float, alpha: float, method: bool) -> None:
        super().__init__()
        self.beta, self.alpha, self.method = beta, alpha, method
        self.bias = nn.Parameter(torch.randn(1, 1, 3, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x[..., :2], x[:, :2, 2:]  # [n, 3, 2] @ [n, 2, 3]
        if self.method:
            return self.bias.expand(x.shape[0], 1, 3).baddbmm(a, b, beta=self.beta, alpha=self.alpha)
        return torch.baddbmm(self.bias, a, b, beta=self.beta, alpha=self.alpha)


@pytest.mark.parametrize(("beta", "alpha"), [(1.0, 1.0), (0.5, 0.25), (0.0, 2.0)])
@pytest.mark.parametrize("method", [False, True], ids=["function", "method"])
def test_baddbmm_is_written_out_as_a_sum_and_a_product(beta: float, alpha: float, method: bool) -> None:
    net = _Baddbmm(beta, alpha, method)
    x = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
    gm, ops = _graph_module(net, x)
    assert "aten.baddbmm.default" not in ops and "aten.bmm.default" in ops
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x))
