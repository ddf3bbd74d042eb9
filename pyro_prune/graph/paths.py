"""Paths through a traced network: the producers an output reaches (:func:`producers_after`),
the one layer reading it (:func:`sole_reader`), the module returning it (:func:`module_returning`),
the ops before it (:func:`chain_before`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.fx as fx

from pyro_prune.graph.analysis import DependencyAnalysis
from pyro_prune.graph.ops import Op, OpKind


def producers_after(an: DependencyAnalysis, node: fx.Node, passes: Callable[[Op], bool]
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


def sole_reader(an: DependencyAnalysis, node: fx.Node, passes: Callable[[Op], bool]) -> fx.Node | None:
    """The producer node that alone reads ``node``, through a chain of ops ``passes`` accepts
    (each the only user of the one before and reading it as its only tensor input, its first
    argument); ``None`` when the chain branches or meets another op, or the producer is
    called more than once."""
    cur = node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        user = users[0]
        op = an.ops.get(user)
        if op is None or user.args[:1] != (cur,):
            return None
        if op.kind is OpKind.PRODUCER:
            return user if user.op == "call_module" and len(an.producers[str(user.target)]) == 1 else None
        if not passes(op) or len(op.inputs) != 1:
            return None
        cur = user


def module_returning(an: DependencyAnalysis, node: fx.Node) -> str | None:
    """Path of the innermost module around ``node`` (a graph traced with ``torch.export``)
    whose output is ``node``'s value: every user of ``node`` lies outside that module and no
    other value leaves it. ``None`` for the network itself or when there is no such module."""
    stack = node.meta.get("nn_module_stack") or {}
    path = str(list(stack.values())[-1][0]) if stack else ""
    if not path or not node.users:
        return None

    def inside(n: fx.Node) -> bool:
        return any(str(v[0]) == path for v in (n.meta.get("nn_module_stack") or {}).values())

    if any(inside(u) for u in node.users):
        return None
    for n in an.graph.nodes:
        if n is not node and n.op in ("call_function", "call_module") and inside(n) \
                and any(not inside(u) for u in n.users):
            return None
    return path


def chain_before(an: DependencyAnalysis, node: fx.Node, passes: Callable[[Op], bool]) -> list[fx.Node]:
    """The nodes ``node`` reads through first tensor inputs, nearest first: back through the
    ops ``passes`` accepts, ending with the first one it does not accept (or one without
    inputs), e.g. the producer of a gate's structures."""
    chain: list[fx.Node] = []
    cur = an.ops[node].inputs[0]
    while True:
        chain.append(cur)
        op = an.ops[cur]
        if not passes(op) or not op.inputs:
            return chain
        cur = op.inputs[0]
