"""Paths through a traced network: the producers an output reaches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx

from pyro_prune.graph.analysis import _Analysis
from pyro_prune.graph.ops import OpKind, _Op


def _producers_after(an: _Analysis, node: fx.Node, passes: Callable[[_Op], bool]
                     ) -> tuple[list[fx.Node], bool]:
    """The producer nodes that read ``node`` through ops ``passes`` accepts, and whether some
    path met another op (or the output) first."""
    found: list[fx.Node] = []
    blocked = False
    stack, seen = list(node.users), set()
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        op = an.ops.get(user)
        if op is None:  # the output node
            blocked = True
        elif op.kind is OpKind.PRODUCER:
            found.append(user)
        elif passes(op):
            stack.extend(user.users)
        else:
            blocked = True
    return found, blocked


