"""The one structure graph of a network (see :mod:`.trace` and :mod:`.structure`).

* :func:`module_graph` — trace any network (``torch.fx``, or ``torch.export`` where fx cannot)
  into one graph form: leaf layers as modules, every other op as a function;
* :func:`structure_graph` — per gate: kind (neuron, channel, head), producer, consumers,
  the activation after it, and whether it can shrink anything;
* :func:`shrinkable_gates` — the gates structure counts count (the others warned about once);
* :func:`producer_module` — the layer holding one weight row per structure of a gate.
"""

from __future__ import annotations

from pyro_prune.graph.structure import (
    GateInfo,
    StructureGraph,
    producer_module,
    shrinkable_gates,
    structure_graph,
    warn_cannot_shrink,
)
from pyro_prune.graph.trace import ModuleGraph, modes_restored, module_graph

__all__ = ["GateInfo", "ModuleGraph", "StructureGraph", "modes_restored", "module_graph",
           "producer_module", "shrinkable_gates", "structure_graph", "warn_cannot_shrink"]
