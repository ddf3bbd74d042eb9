"""The slicing plan: sizes a network reads from its tensors at run time.

A size computed from a tensor's shape (``x.shape[:2]``, ``b, c = x.size()[:2]``) follows the
slicing when that tensor is sliced alike: the plan re-evaluates such sizes on the new shapes
and leaves them to the run; a size that would stay stale becomes -1 when it is the only one
and no other is -1 (the other sizes then fix it), and is refused otherwise.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pyro_prune.convert import count_params, to_deterministic
from pyro_prune.graph import structure_graph
from pyro_prune.models import bayesianize


class _ShapeRead(nn.Module):
    """Channel sizes read at run time from the tensor being reshaped (``by="shape"``,
    ``by="size"``), or from the input, which is not sliced (2 x its width: ``by="input"``
    beside the batch size, ``by="input_minus_one"`` beside a -1)."""

    def __init__(self, by: str) -> None:
        super().__init__()
        self.conv, self.hidden, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Linear(16, 12), nn.Linear(12, 3)
        self.by = by

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3), keepdim=True)
        if self.by == "shape":
            h = h.reshape(h.shape[:2])
        elif self.by == "size":
            b, c, _, _ = h.size()
            h = h.view(b, c)
        elif self.by == "input":
            h = h.view(x.shape[0], 2 * x.shape[-1])
        else:
            h = h.view(-1, 2 * x.shape[-1])
        return self.fc(torch.relu(self.hidden(h)))


@pytest.mark.parametrize("by", ["shape", "size", "input"])
def test_a_size_read_from_the_sliced_tensor_follows_the_slicing(by: str) -> None:
    """``by="input"``: ``view(b, 2 * width)`` equals the 16 channels only by chance, and would
    be stale after slicing; it is the only such size and none is -1, so it becomes -1."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = _ShapeRead(by).eval()
    model = bayesianize(net, example_input=x[:2])
    (name,) = [n for n, g in structure_graph(model).gates.items() if g.rows == ("conv",)]
    model.gates()[name].prune(torch.arange(16) < 6)
    model.eval()
    det = to_deterministic(model, example_input=x[:2])
    with torch.no_grad():
        torch.testing.assert_close(det(x), model.predict(x), rtol=1e-5, atol=1e-5)
    assert det.conv.weight.shape[0] == 10 and count_params(det) < count_params(net)


def test_a_size_read_from_a_tensor_that_is_not_sliced_is_refused_beside_a_minus_one() -> None:
    """``view(-1, 2 * width)``: the stale size cannot become -1 (there is one already), so the
    gate is left out, with the reason."""
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match=r"computed at run time from something that is not sliced with it"):
        model = bayesianize(_ShapeRead("input_minus_one").eval(), example_input=x[:2], gate="mask")
    assert [g.rows for g in structure_graph(model).gates.values()] == [("hidden",)]
